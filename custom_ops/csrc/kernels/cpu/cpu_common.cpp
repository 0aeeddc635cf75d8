// Private helpers of the CPU kernels: thread pool-less parallel-for and dtype conversion.
#include "cpu_common.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

namespace ssm {
namespace cpu {

int resolve_threads(int num_threads) {
  if (num_threads > 0) return num_threads;
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(std::min<unsigned>(hc, 1024u));
}

void parallel_for(int64_t n, int num_threads, double work_per_item,
                  const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  // Below ~64k float operations per thread, starting a thread costs more than it saves.
  constexpr double kMinWorkPerThread = 65536.0;
  int64_t threads = resolve_threads(num_threads);
  threads = std::min<int64_t>(threads, n);
  const double total = work_per_item * static_cast<double>(n);
  const int64_t by_work = static_cast<int64_t>(std::max(1.0, total / kMinWorkPerThread));
  threads = std::max<int64_t>(1, std::min(threads, by_work));
  if (threads == 1) {
    fn(0, n);
    return;
  }
  // Dynamic blocks: ~8 blocks per thread balances uneven items without much contention.
  const int64_t block = std::max<int64_t>(1, n / (threads * 8));
  std::atomic<int64_t> next(0);
  auto worker = [&]() {
    for (;;) {
      const int64_t begin = next.fetch_add(block);
      if (begin >= n) break;
      fn(begin, std::min(n, begin + block));
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads - 1));
  for (int64_t i = 0; i + 1 < threads; ++i) {
    try {
      pool.emplace_back(worker);
    } catch (...) {
      break;  // could not start a thread: the remaining workers (at least this one) do the work
    }
  }
  worker();
  for (auto& t : pool) t.join();
}

void convert_to_float(int dtype, const void* src, float* dst, int64_t n, int num_threads) {
  constexpr int64_t kBlock = 16384;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  parallel_for(blocks, num_threads, 4.0 * kBlock, [&](int64_t b0, int64_t b1) {
    const int64_t i0 = b0 * kBlock, i1 = std::min(n, b1 * kBlock);
    if (dtype == SSM_FLOAT32) {
      std::memcpy(dst + i0, static_cast<const float*>(src) + i0, static_cast<size_t>(i1 - i0) * sizeof(float));
    } else if (dtype == SSM_FLOAT16) {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = i0; i < i1; ++i) dst[i] = half_to_float(s[i]);
    } else {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = i0; i < i1; ++i) dst[i] = bf16_to_float(s[i]);
    }
  });
}

void convert_from_float(int dtype, const float* src, void* dst, int64_t n, int num_threads) {
  constexpr int64_t kBlock = 16384;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  parallel_for(blocks, num_threads, 4.0 * kBlock, [&](int64_t b0, int64_t b1) {
    const int64_t i0 = b0 * kBlock, i1 = std::min(n, b1 * kBlock);
    if (dtype == SSM_FLOAT32) {
      std::memcpy(static_cast<float*>(dst) + i0, src + i0, static_cast<size_t>(i1 - i0) * sizeof(float));
    } else if (dtype == SSM_FLOAT16) {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = i0; i < i1; ++i) d[i] = float_to_half(src[i]);
    } else {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = i0; i < i1; ++i) d[i] = float_to_bf16(src[i]);
    }
  });
}

}  // namespace cpu
}  // namespace ssm
