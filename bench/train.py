"""Training speed of each preset, against baselines measured in the same run.

    python bench/train.py [--cache CACHE] [--presets tiny small base] [--threads 2]

Per preset at 60 s crops (1200 frames): forward+backward ms per example; FLOPs per example
(torch.utils.flop_counter); achieved FLOP/s as a share of a dense float32 matmul's FLOP/s on
the same device and threads. Then the real data pipeline (PairDataset over a tensor cache,
DataLoader, noise, loss, AdamW step) against the same training step fed one synthetic batch
held in memory. CACHE defaults to cache/asap when present, else a cache of the built-in corpus.
On CUDA the same runs in bf16 autocast.
Goals: small ≤ 20 ms/example on 2 CPU cores; ≥ 40% of matmul FLOP/s; real pipeline
≥ 0.9 of synthetic.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from harmonixr.data.cache import TensorCache, preprocess
from harmonixr.data.pairs import (
    PairDataset,
    PieceSet,
    StepSampler,
)
from harmonixr.model import PRESETS, SiaViT
from harmonixr.model.embed import to_model_input
from harmonixr.model.losses import DynamicMarginContrastive, pair_distance
from harmonixr.train.augment import multiplicative_noise

CROP = 1200


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def matmul_flops(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def fwd_bwd(model: SiaViT, x: torch.Tensor, device: torch.device, reps: int) -> float:
    def step() -> None:
        with _autocast(device):
            z = model(x)
        z.float().sum().backward()

    for _ in range(2):
        step()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def count_flops(model: SiaViT, x: torch.Tensor, device: torch.device) -> int:
    with FlopCounterMode(display=False) as counter, _autocast(device):
        z = model(x)
        z.float().sum().backward()
    return counter.get_total_flops()


def pipeline(
    cache_dir: Path, preset: str, device: torch.device, batch: int, steps: int
) -> tuple[float, float]:
    """(real, synthetic) training steps per second for one preset."""
    with TensorCache(cache_dir) as cache:
        rows = cache.pieces()
        names = sorted({r.composer for r in rows})
        pieces = PieceSet.from_cache(cache, rows, names)
    model = SiaViT(PRESETS[preset]).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = DynamicMarginContrastive().to(device)

    def train_step(b: dict) -> None:
        x = torch.cat((b["x1"], b["x2"])).to(device, non_blocking=True)
        lengths = torch.cat((b["len1"], b["len2"])).to(device)
        with _autocast(device):
            z = model(multiplicative_noise(to_model_input(x), 0.1), lengths)
        n = b["y"].shape[0]
        loss = loss_fn(pair_distance(z[:n].float(), z[n:].float()), b["y"].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ds = PairDataset(pieces, CROP, seed=0)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, sampler=StepSampler((steps + 3) * batch), num_workers=0
    )
    it = iter(loader)
    fixed = next(it)
    for _ in range(2):
        train_step(fixed)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(next(it))
    _sync(device)
    real = steps / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(fixed)
    _sync(device)
    synthetic = steps / (time.perf_counter() - t0)
    return real, synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="cache/asap")
    ap.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pipeline-steps", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"device: {device} ({torch.get_num_threads()} threads), crops of {CROP} frames (60 s)")
    peak = matmul_flops(device)
    print(f"dense matmul 2048²: {peak / 1e9:.1f} GFLOP/s")
    print(
        f"{'preset':8s} {'params':>10s} {'ms/example':>11s} {'GFLOP/ex':>9s} "
        f"{'GFLOP/s':>8s} {'share':>6s}"
    )
    for name in args.presets:
        model = SiaViT(PRESETS[name]).to(device).train()
        batch = 16 if name != "base" or device.type == "cuda" else 4
        x = torch.rand(batch, 1, 12, 6, CROP, device=device)
        flops = count_flops(model, x, device)
        t = fwd_bwd(model, x, device, reps=5 if name != "base" else 3)
        achieved = flops / t
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{name:8s} {params:10,d} {t / batch * 1000:11.1f} {flops / batch / 1e9:9.2f} "
            f"{achieved / 1e9:8.1f} {achieved / peak:6.0%}"
        )
    cache_dir = Path(args.cache)
    tmp = None
    if not (cache_dir / "cache.sqlite").is_file():
        tmp = tempfile.TemporaryDirectory()
        cache_dir = Path(tmp.name) / "cache"
        print(f"(no {args.cache}: building a cache of the built-in corpus)", file=sys.stderr)
        preprocess("builtin", cache_dir, workers=args.threads)
    real, synthetic = pipeline(cache_dir, "small", device, 16, args.pipeline_steps)
    print(
        f"pipeline (small, 16 pairs/step, {cache_dir}): real {real:.2f} steps/s, "
        f"synthetic {synthetic:.2f} steps/s, ratio {real / synthetic:.2f}  goal >= 0.9"
    )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
