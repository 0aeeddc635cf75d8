// Private helpers of the CPU kernels: parallel-for (own threads or the host's executor) and dtype conversion.
#include "cpu_common.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SSM_F16C_PATH 1
#endif

namespace ssm {
namespace cpu {

#ifdef SSM_F16C_PATH
// F16C converts 8 halves per instruction, round-to-nearest-even like the portable code (~20x faster than
// it); the one visible difference is that a signalling NaN comes out quiet. Picked at run time.
static bool cpu_has_f16c() {
  static const bool has = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  return has;
}

static __attribute__((target("avx,f16c"))) void halves_to_floats_f16c(const uint16_t* s, float* d, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  }
  for (; i < n; ++i) d[i] = half_to_float(s[i]);
}

static __attribute__((target("avx,f16c"))) void floats_to_halves_f16c(const float* s, uint16_t* d, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), h);
  }
  for (; i < n; ++i) d[i] = float_to_half(s[i]);
}
#endif

int resolve_threads(int num_threads) {
  if (num_threads > 0) return num_threads;
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(std::min<unsigned>(hc, 1024u));
}

namespace {

// The executor installed by the calling thread (ssm_set_cpu_executor); none: the library's own threads.
struct Executor {
  ssm_cpu_executor run = nullptr;
  void* data = nullptr;
};
thread_local Executor t_executor;

// The blocks of one parallel_for, handed out in order to whoever asks: the calling thread, the library's
// threads or the executor's tasks. Taking blocks from one queue (rather than by task index) keeps the
// loop complete whatever the executor does: the calling thread drains what is left when it returns.
struct BlockQueue {
  const std::function<void(int64_t, int64_t)>* fn;
  int64_t n;
  int64_t block;
  std::atomic<int64_t> next{0};

  void drain() noexcept {
    for (;;) {
      const int64_t begin = next.fetch_add(block);
      if (begin >= n) return;
      (*fn)(begin, std::min(n, begin + block));
    }
  }
};

void drain_task(void* queue, int64_t /*index*/) noexcept { static_cast<BlockQueue*>(queue)->drain(); }

void run_on_own_threads(BlockQueue& queue, int64_t threads) {
  std::vector<std::thread> pool;
  try {
    pool.reserve(static_cast<size_t>(threads - 1));
    for (int64_t i = 0; i + 1 < threads; ++i) pool.emplace_back([&queue] { queue.drain(); });
  } catch (...) {
    // could not start a thread: the ones started (at least this one) do the work
  }
  queue.drain();
  for (auto& t : pool) t.join();
}

void run_on_executor(const Executor& executor, BlockQueue& queue, int64_t threads) {
  // A failure status needs no handling of its own: the blocks no task took are still in the queue.
  (void)executor.run(executor.data, drain_task, &queue, threads);
  queue.drain();
}

}  // namespace

void parallel_for(int64_t n, int num_threads, double work_per_item,
                  const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  // Below ~64k float operations per thread, handing work to another thread costs more than it saves.
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
  BlockQueue queue;
  queue.fn = &fn;
  queue.n = n;
  queue.block = std::max<int64_t>(1, n / (threads * 8));
  const Executor executor = t_executor;
  if (executor.run != nullptr) {
    run_on_executor(executor, queue, threads);
  } else {
    run_on_own_threads(queue, threads);
  }
}

void span_to_float(int dtype, const void* src, int64_t offset, float* dst, int64_t n) {
  if (dtype == SSM_FLOAT32) {
    std::memcpy(dst, static_cast<const float*>(src) + offset, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  const uint16_t* s = static_cast<const uint16_t*>(src) + offset;
  if (dtype == SSM_FLOAT16) {
#ifdef SSM_F16C_PATH
    if (cpu_has_f16c()) return halves_to_floats_f16c(s, dst, n);
#endif
    for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(s[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(s[i]);
  }
}

void span_from_float(int dtype, const float* src, void* dst, int64_t offset, int64_t n) {
  if (dtype == SSM_FLOAT32) {
    std::memcpy(static_cast<float*>(dst) + offset, src, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  uint16_t* d = static_cast<uint16_t*>(dst) + offset;
  if (dtype == SSM_FLOAT16) {
#ifdef SSM_F16C_PATH
    if (cpu_has_f16c()) return floats_to_halves_f16c(src, d, n);
#endif
    for (int64_t i = 0; i < n; ++i) d[i] = float_to_half(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) d[i] = float_to_bf16(src[i]);
  }
}

// Cost of converting one element in parallel_for's work units: conversions stay on the calling thread
// below ~256k elements, where starting a thread costs more than it saves.
constexpr double kConvertWorkPerElement = 0.25;

void convert_to_float(int dtype, const void* src, float* dst, int64_t n, int num_threads) {
  constexpr int64_t kBlock = 16384;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  parallel_for(blocks, num_threads, kConvertWorkPerElement * kBlock, [&](int64_t b0, int64_t b1) {
    const int64_t i0 = b0 * kBlock, i1 = std::min(n, b1 * kBlock);
    span_to_float(dtype, src, i0, dst + i0, i1 - i0);
  });
}

void convert_from_float(int dtype, const float* src, void* dst, int64_t n, int num_threads) {
  constexpr int64_t kBlock = 16384;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  parallel_for(blocks, num_threads, kConvertWorkPerElement * kBlock, [&](int64_t b0, int64_t b1) {
    const int64_t i0 = b0 * kBlock, i1 = std::min(n, b1 * kBlock);
    span_from_float(dtype, src + i0, dst, i0, i1 - i0);
  });
}

}  // namespace cpu
}  // namespace ssm

extern "C" SSM_API void ssm_set_cpu_executor(ssm_cpu_executor executor, void* executor_data) {
  ssm::cpu::t_executor.run = executor;
  ssm::cpu::t_executor.data = executor != nullptr ? executor_data : nullptr;
}
