"""Per-element float64 loops written straight from the operator definitions (docs/ops.md).

Deliberately slow and simple: an independent check of the vectorised reference implementations.
"""
import math


def naive_selective_scan(u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus):
    batch, channels, length = u.shape
    groups, dstate = Bs.shape[1], Bs.shape[2]
    dim = channels // groups
    y = [[[0.0] * length for _ in range(channels)] for _ in range(batch)]
    for b in range(batch):
        for c in range(channels):
            g = c // dim
            h = [0.0] * dstate
            for t in range(length):
                dt = float(delta[b, c, t]) + (float(delta_bias[c]) if delta_bias is not None else 0.0)
                if delta_softplus:
                    dt = math.log1p(math.exp(dt)) if dt <= 20.0 else dt
                acc = 0.0
                for n in range(dstate):
                    h[n] = math.exp(dt * float(A[c, n])) * h[n] + dt * float(Bs[b, g, n, t]) * float(u[b, c, t])
                    acc += float(Cs[b, g, n, t]) * h[n]
                if Ds is not None:
                    acc += float(Ds[c]) * float(u[b, c, t])
                y[b][c][t] = acc
    return y


def naive_deform_aggregate(value, offset_mask, kh, kw, sh, sw, ph, pw, dh, dw, group, gc, scale, remove_center):
    batch, height, width, _ = value.shape
    _, out_h, out_w, _ = offset_mask.shape
    points = [(i, j) for i in range(kw) for j in range(kh)
              if not (remove_center and i == kw // 2 and j == kh // 2)]
    k = len(points)
    out = [[[[0.0] * (group * gc) for _ in range(out_w)] for _ in range(out_h)] for _ in range(batch)]

    def pixel(b, y, x, ch):
        if 0 <= y < height and 0 <= x < width:
            return float(value[b, y, x, ch])
        return 0.0

    for b in range(batch):
        for y in range(out_h):
            for x in range(out_w):
                for g in range(group):
                    o = offset_mask[b, y, x, g * k * 3:(g + 1) * k * 3]
                    for p, (i, j) in enumerate(points):
                        dx, dy, m = float(o[2 * p]), float(o[2 * p + 1]), float(o[2 * k + p])
                        base_x = x * sw - pw + ((dw * (kw - 1)) >> 1)
                        base_y = y * sh - ph + ((dh * (kh - 1)) >> 1)
                        px = base_x - ((dw * (kw - 1)) >> 1) * scale + (i * dw + dx) * scale
                        py = base_y - ((dh * (kh - 1)) >> 1) * scale + (j * dh + dy) * scale
                        if px <= -1 or py <= -1 or px >= width or py >= height:
                            continue
                        x0, y0 = math.floor(px), math.floor(py)
                        fx, fy = px - x0, py - y0
                        for c in range(gc):
                            ch = g * gc + c
                            v = ((1 - fy) * (1 - fx) * pixel(b, y0, x0, ch) + (1 - fy) * fx * pixel(b, y0, x0 + 1, ch)
                                 + fy * (1 - fx) * pixel(b, y0 + 1, x0, ch) + fy * fx * pixel(b, y0 + 1, x0 + 1, ch))
                            out[b][y][x][ch] += m * v
    return out
