#include "shape_rules.hpp"

#include <climits>
#include <cmath>

namespace ssmpose_ov {

namespace {

bool known(int64_t d) { return d != kUnknown; }

// Two dimensions that may still be equal (either unknown, or the same).
bool compatible(int64_t a, int64_t b) { return !known(a) || !known(b) || a == b; }

bool compatible(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!compatible(a[i], b[i])) return false;
  }
  return true;
}

// Python-style floor division (b > 0), so that the output size matches reference.deform_output_size.
int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

std::string rank_error(const std::string& name, const char* layout, const Shape& s) {
  return name + " must be " + layout + ", got shape " + shape_str(s.dims);
}

}  // namespace

std::string shape_str(const std::vector<int64_t>& dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ", ";
    s += known(dims[i]) ? std::to_string(dims[i]) : "?";
  }
  return s + (dims.size() == 1 ? ",)" : ")");
}

std::string check_selective_scan(const std::vector<Shape>& shapes, const std::vector<std::string>& names) {
  const Shape &u = shapes[0], &delta = shapes[1], &A = shapes[2], &Bs = shapes[3], &Cs = shapes[4];
  if (u.rank_known && u.dims.size() != 3) return rank_error(names[0], "(B, G*D, L)", u);
  if (delta.rank_known && delta.dims.size() != 3) return rank_error(names[1], "(B, G*D, L)", delta);
  if (A.rank_known && A.dims.size() != 2) return rank_error(names[2], "(G*D, N)", A);
  if (Bs.rank_known && Bs.dims.size() != 4) return rank_error(names[3], "(B, G, N, L)", Bs);
  if (Cs.rank_known && Cs.dims.size() != 4) return rank_error(names[4], "(B, G, N, L)", Cs);
  for (size_t i = 5; i < shapes.size(); ++i) {
    if (shapes[i].rank_known && shapes[i].dims.size() != 1) return rank_error(names[i], "(G*D,)", shapes[i]);
  }
  if (u.rank_known && delta.rank_known && !compatible(u.dims, delta.dims)) {
    return "delta shape " + shape_str(delta.dims) + " != u shape " + shape_str(u.dims);
  }
  if (Bs.rank_known && Cs.rank_known && !compatible(Bs.dims, Cs.dims)) {
    return "Cs shape " + shape_str(Cs.dims) + " != Bs shape " + shape_str(Bs.dims);
  }
  const int64_t batch = u.rank_known ? u.dims[0] : kUnknown, channels = u.rank_known ? u.dims[1] : kUnknown,
                length = u.rank_known ? u.dims[2] : kUnknown;
  const int64_t groups = Bs.rank_known ? Bs.dims[1] : kUnknown, dstate = Bs.rank_known ? Bs.dims[2] : kUnknown;
  if (Bs.rank_known && (!compatible(Bs.dims[0], batch) || !compatible(Bs.dims[3], length))) {
    return "Bs shape " + shape_str(Bs.dims) + " does not match u (B=" + std::to_string(batch) +
           ", L=" + std::to_string(length) + ")";
  }
  if (known(groups) && groups < 1) return "Bs has " + std::to_string(groups) + " groups; needs >= 1";
  if (known(groups) && known(channels) && channels % groups != 0) {
    return "channels " + std::to_string(channels) + " of u are not divisible by the " + std::to_string(groups) +
           " groups of Bs";
  }
  if (A.rank_known && (!compatible(A.dims[0], channels) || !compatible(A.dims[1], dstate))) {
    return "A must be (G*D, N) = " + shape_str({channels, dstate}) + ", got " + shape_str(A.dims);
  }
  for (size_t i = 5; i < shapes.size(); ++i) {
    if (shapes[i].rank_known && !compatible(shapes[i].dims[0], channels)) {
      return names[i] + " must be " + shape_str({channels}) + ", got " + shape_str(shapes[i].dims);
    }
  }
  const int64_t n = known(dstate) ? dstate : (A.rank_known ? A.dims[1] : kUnknown);
  if (known(n) && (n < 1 || n > kMaxState)) {
    return "dstate N = Bs.shape[2] must be in 1.." + std::to_string(kMaxState) + ", got " + std::to_string(n);
  }
  return std::string();
}

std::string check_selective_scan_2d(const std::vector<Shape>& shapes, const std::vector<std::string>& names) {
  const Shape &x = shapes[0], &delta = shapes[1], &A = shapes[2], &Bs = shapes[3], &Cs = shapes[4];
  if (x.rank_known && x.dims.size() != 4) return rank_error(names[0], "(B, H, W, D)", x);
  if (Bs.rank_known && Bs.dims.size() != 5) return rank_error(names[3], "(B, H, W, K, N)", Bs);
  const int64_t batch = x.rank_known ? x.dims[0] : kUnknown, height = x.rank_known ? x.dims[1] : kUnknown,
                width = x.rank_known ? x.dims[2] : kUnknown, dim = x.rank_known ? x.dims[3] : kUnknown;
  const std::vector<int64_t> bhw{batch, height, width};
  if (Bs.rank_known && !compatible(std::vector<int64_t>(Bs.dims.begin(), Bs.dims.begin() + 3), bhw)) {
    return "Bs shape " + shape_str(Bs.dims) + " does not match x (B, H, W) = " + shape_str(bhw);
  }
  const int64_t directions = Bs.rank_known ? Bs.dims[3] : kUnknown, dstate = Bs.rank_known ? Bs.dims[4] : kUnknown;
  if (known(directions) && directions != kScan2DDirections) {
    return "Bs.shape[3] is the number of directions K, which must be " + std::to_string(kScan2DDirections) +
           ", got " + std::to_string(directions);
  }
  if (Cs.rank_known && Bs.rank_known && !compatible(Cs.dims, Bs.dims)) {
    return "Cs shape " + shape_str(Cs.dims) + " != Bs shape " + shape_str(Bs.dims);
  }
  if (Cs.rank_known && !Bs.rank_known && Cs.dims.size() != 5) return rank_error(names[4], "(B, H, W, K, N)", Cs);
  if (known(dim) && dim > INT64_MAX / kScan2DDirections) return "K*D overflows";
  const int64_t channels = known(dim) ? kScan2DDirections * dim : kUnknown;
  const std::vector<int64_t> delta_dims{batch, height, width, channels};
  if (delta.rank_known && !compatible(delta.dims, delta_dims)) {
    return "delta must be (B, H, W, K*D) = " + shape_str(delta_dims) + ", got " + shape_str(delta.dims);
  }
  if (A.rank_known && !compatible(A.dims, {channels, dstate})) {
    return "A must be " + shape_str({channels, dstate}) + ", got " + shape_str(A.dims);
  }
  for (size_t i = 5; i < shapes.size(); ++i) {
    if (shapes[i].rank_known && !compatible(shapes[i].dims, {channels})) {
      return names[i] + " must be " + shape_str({channels}) + ", got " + shape_str(shapes[i].dims);
    }
  }
  int64_t n = dstate;
  if (!known(n) && Cs.rank_known) n = Cs.dims[4];
  if (!known(n) && A.rank_known) n = A.dims[1];
  if (known(n) && (n < 1 || n > kMaxState)) {
    return "dstate N = Bs.shape[4] must be in 1.." + std::to_string(kMaxState) + ", got " + std::to_string(n);
  }
  return std::string();
}

std::string check_selective_scan_2d_proj(const std::vector<Shape>& shapes, const std::vector<std::string>& names) {
  const Shape &x = shapes[0], &x_proj = shapes[1], &dtw = shapes[2], &A = shapes[3];
  if (x.rank_known && x.dims.size() != 4) return rank_error(names[0], "(B, H, W, D)", x);
  const int64_t batch = x.rank_known ? x.dims[0] : kUnknown, height = x.rank_known ? x.dims[1] : kUnknown,
                width = x.rank_known ? x.dims[2] : kUnknown, dim = x.rank_known ? x.dims[3] : kUnknown;
  if (dtw.rank_known && (dtw.dims.size() != 3 || !compatible(dtw.dims[0], kScan2DDirections) ||
                         !compatible(dtw.dims[1], dim))) {
    return "dt_projection must be (K, D, R) = (" + std::to_string(kScan2DDirections) + ", " +
           (known(dim) ? std::to_string(dim) : std::string("?")) + ", R), got shape " + shape_str(dtw.dims);
  }
  const int64_t rank = dtw.rank_known ? dtw.dims[2] : kUnknown;
  if (known(rank) && (rank < 1 || rank > kMaxDtRank)) {
    return "dt_rank R = dt_projection.shape[2] must be in 1.." + std::to_string(kMaxDtRank) + ", got " +
           std::to_string(rank);
  }
  if (known(dim) && dim > INT64_MAX / kScan2DDirections) return "K*D overflows";
  const int64_t channels = known(dim) ? kScan2DDirections * dim : kUnknown;
  if (A.rank_known && (A.dims.size() != 2 || !compatible(A.dims[0], channels))) {
    return "A must be (" + (known(channels) ? std::to_string(channels) : std::string("?")) + ", N), got " +
           shape_str(A.dims);
  }
  const int64_t dstate = A.rank_known ? A.dims[1] : kUnknown;
  if (known(dstate) && (dstate < 1 || dstate > kMaxState)) {
    return "dstate N = A.shape[1] must be in 1.." + std::to_string(kMaxState) + ", got " + std::to_string(dstate);
  }
  const int64_t row = known(rank) && known(dstate) ? rank + 2 * dstate : kUnknown;
  const std::vector<int64_t> xp_dims{batch, height, width, kScan2DDirections, row};
  if (x_proj.rank_known && !compatible(x_proj.dims, xp_dims)) {
    return "with dt_projection, input 1 (x_proj) must be (B, H, W, K, R + 2N) = " + shape_str(xp_dims) + ", got " +
           shape_str(x_proj.dims);
  }
  for (size_t i = 4; i < shapes.size(); ++i) {
    if (shapes[i].rank_known && !compatible(shapes[i].dims, {channels})) {
      return names[i] + " must be " + shape_str({channels}) + ", got " + shape_str(shapes[i].dims);
    }
  }
  return std::string();
}

std::string check_deform_attributes(const DeformAttributes& a, int64_t* om_cols) {
  struct Range {
    const char* name;
    int64_t value, lo, hi;
  };
  const Range ranges[] = {
      {"kernel_h", a.kernel_h, 1, INT32_MAX},     {"kernel_w", a.kernel_w, 1, INT32_MAX},
      {"stride_h", a.stride_h, 1, INT32_MAX},     {"stride_w", a.stride_w, 1, INT32_MAX},
      {"pad_h", a.pad_h, 0, INT32_MAX},           {"pad_w", a.pad_w, 0, INT32_MAX},
      {"dilation_h", a.dilation_h, 1, INT32_MAX}, {"dilation_w", a.dilation_w, 1, INT32_MAX},
      {"group", a.group, 1, INT32_MAX},           {"group_channels", a.group_channels, 1, INT32_MAX},
      {"remove_center", a.remove_center, 0, 1},
  };
  for (const Range& r : ranges) {
    if (r.value < r.lo || r.value > r.hi) {
      return "attribute " + std::string(r.name) + " = " + std::to_string(r.value) + " is out of range [" +
             std::to_string(r.lo) + ", " + std::to_string(r.hi) + "]";
    }
  }
  if (!std::isfinite(a.offset_scale)) return "attribute offset_scale is not finite";
  const int64_t kernel_points = a.kernel_h * a.kernel_w;  // no overflow: both < 2^31
  const int64_t points = kernel_points - a.remove_center;
  if (points < 1) {
    return "kernel " + std::to_string(a.kernel_h) + "x" + std::to_string(a.kernel_w) +
           " with remove_center has no sampling points";
  }
  if (kernel_points > kMaxPoints) {
    return "kernel_h*kernel_w = " + std::to_string(kernel_points) + " exceeds the supported " +
           std::to_string(kMaxPoints);
  }
  if (a.group > INT64_MAX / (points * 3)) {
    return "group*K*3 overflows (group=" + std::to_string(a.group) + ", K=" + std::to_string(points) + ")";
  }
  *om_cols = a.group * points * 3;
  return std::string();
}

std::string check_deform_aggregate(const DeformAttributes& a, const Shape& value, const Shape& offset_mask,
                                   std::vector<int64_t>* out) {
  int64_t om_cols = 0;
  const std::string attr_error = check_deform_attributes(a, &om_cols);
  if (!attr_error.empty()) return attr_error;
  const int64_t channels = a.group * a.group_channels;  // no overflow: both < 2^31
  *out = {kUnknown, kUnknown, kUnknown, channels};
  if (value.rank_known && value.dims.size() != 4) return rank_error("value", "(B, H, W, G*C)", value);
  if (offset_mask.rank_known && offset_mask.dims.size() != 4) {
    return rank_error("offset_mask", "(B, Hout, Wout, P)", offset_mask);
  }
  if (value.rank_known) {
    const int64_t height = value.dims[1], width = value.dims[2];
    if (!compatible(value.dims[3], channels)) {
      return "value has " + std::to_string(value.dims[3]) + " channels, expected group*group_channels = " +
             std::to_string(a.group) + "*" + std::to_string(a.group_channels);
    }
    (*out)[0] = value.dims[0];
    // Hout = (H + 2*pad_h - (dilation_h*(kernel_h-1)+1)) // stride_h + 1; no overflow: attributes < 2^31.
    if (known(height)) {
      (*out)[1] = floor_div(height + 2 * a.pad_h - (a.dilation_h * (a.kernel_h - 1) + 1), a.stride_h) + 1;
    }
    if (known(width)) {
      (*out)[2] = floor_div(width + 2 * a.pad_w - (a.dilation_w * (a.kernel_w - 1) + 1), a.stride_w) + 1;
    }
    for (int i = 1; i <= 2; ++i) {
      if (known((*out)[i]) && (*out)[i] < 0) {
        return "the kernel does not fit the value image " + shape_str({height, width}) + " (output size " +
               std::to_string((*out)[i]) + ")";
      }
    }
  }
  if (offset_mask.rank_known) {
    const std::vector<int64_t> lead{offset_mask.dims[0], offset_mask.dims[1], offset_mask.dims[2]};
    const std::vector<int64_t> expected{(*out)[0], (*out)[1], (*out)[2]};
    if (!compatible(lead, expected)) {
      return "offset_mask leading dims " + shape_str(lead) + " != (B, Hout, Wout) = " + shape_str(expected);
    }
    // The batch may come from offset_mask; Hout and Wout only from the value image. Were they taken from
    // offset_mask while H or W is unknown, the output could be static (and be allocated before any evaluate)
    // although the image turns out empty: found by fuzzing, value (1, ?, 3, 2^31-1) with offset_mask
    // (?, 22, 25, 3) made a static 4.7 TB output that the CPU plugin tried to allocate.
    if (!known((*out)[0])) (*out)[0] = lead[0];
    if (known(offset_mask.dims[3]) && offset_mask.dims[3] < om_cols) {
      return "offset_mask has " + std::to_string(offset_mask.dims[3]) + " columns, needs >= group*K*3 = " +
             std::to_string(om_cols);
    }
  }
  // An empty image with a non-empty output, refused here so that neither the model's output shape nor the
  // evaluate's output tensor is ever sized (found by fuzzing: with group_channels near 2^31 that is terabytes).
  if (value.rank_known && (value.dims[1] == 0 || value.dims[2] == 0)) {
    bool output_empty_or_unknown = false;
    for (int i = 0; i < 4; ++i) output_empty_or_unknown |= !known((*out)[i]) || (*out)[i] == 0;
    if (!output_empty_or_unknown) {
      return "value has an empty image (H, W) = " + shape_str({value.dims[1], value.dims[2]}) +
             " but the output is not empty";
    }
  }
  return std::string();
}

std::string check_offset_bias(const Shape& offset_mask, const Shape& offset_bias) {
  if (!offset_bias.rank_known) return std::string();
  const int64_t columns = offset_mask.rank_known && offset_mask.dims.size() == 4 ? offset_mask.dims[3] : kUnknown;
  if (offset_bias.dims.size() != 1 || !compatible(offset_bias.dims[0], columns)) {
    return "offset_bias must have shape (P) = (" + (known(columns) ? std::to_string(columns) : std::string("?")) +
           "), offset_mask's last dimension, got " + shape_str(offset_bias.dims);
  }
  return std::string();
}

}  // namespace ssmpose_ov
