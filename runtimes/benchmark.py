"""Throughput of a session: median latency and images/s over repeated runs (no printing here)."""
from __future__ import annotations

import statistics
import time

import numpy as np


def _sync(device_is_cuda: bool) -> None:
    if device_is_cuda:
        import torch
        torch.cuda.synchronize()


def benchmark_session(session, batch: int, repeats: int = 20, warmup: int = 3, on_device: bool = False) -> dict:
    """Time `session.run` on a random batch. With `on_device`, the input is a CUDA tensor and the
    output stays on the device (GPU sessions), so the timing excludes host transfers."""
    h, w = session.metadata["input_size"]
    frames = int(session.metadata.get("num_frames", 1))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, 3, h, w) if frames == 1 else (batch, frames, 3, h, w)).astype(np.float32)
    if on_device:
        import torch
        images = torch.from_numpy(images).cuda()
    for _ in range(warmup):
        session.run(images)
    _sync(on_device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(images)
        _sync(on_device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"backend": session.backend, "batch": batch, "repeats": repeats, "median_s": median,
            "p50_s": median, "p90_s": float(np.percentile(times, 90)),
            "images_per_s": batch / median, "min_s": min(times), "slices": _slices(session, batch)}


def _slices(session, batch: int) -> int:
    """How many runs `session.run` splits a batch into (sessions with a max_batch_per_run)."""
    limit = getattr(session, "max_batch_per_run", None)
    return 1 if not limit else max(1, -(-batch // limit))
