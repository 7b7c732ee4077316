"""Second stage: SiaViT's statistics branch and head, trained on whole pieces.

The first stage (``train/run.py``) teaches the convolutions and the transformer on 30 s crops.
This stage keeps them fixed, reads every piece of the run's training and validation sides once
(the mean pooled token of its windows, as whole-piece embedding reads it; cached in
``SOURCE/head-features.npz``), computes each piece's statistics (``model/stats.py``; cached
beside the tensors), and trains the statistics network, the ViT projection and the head
together with a supervised contrastive loss over *pieces*: positives are pieces by the same
composer in another group, pairs inside one group count neither way. Each step sees a whole
piece or one of a few fixed random excerpts of it (its windows' mean and the excerpt's own
statistics), and drops one branch at random (``branch_dropout``) so that each branch is useful
alone. The checkpoint of best validation AUC (every pair of validation pieces in different
groups counted once) is exported; ``OUT/head_log.json`` records validation AUC against wall
time.

The output is an ordinary run directory (same split, crop and tensors), so evaluation, the
index and the service read it like any other run.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from harmonixr._files import atomic_json
from harmonixr.data.cache import TensorCache
from harmonixr.evaluate.metrics import roc_auc
from harmonixr.model.embed import piece_windows, pool_features
from harmonixr.model.encoder import SiaViT
from harmonixr.model.io import save_weights
from harmonixr.model.losses import group_supcon
from harmonixr.model.stats import FRAME_S, LOW_NOTE, STATS_DIM, STATS_VERSION
from harmonixr.train.piece_inputs import Views, build_views, cached_stats, window_features_cached
from harmonixr.train.rundir import CONFIG, SPLIT, Run

BRANCHES = ("both", "vit", "stats")
HEAD_LOG = "head_log.json"


@dataclass(frozen=True)
class HeadConfig:
    steps: int = 1500
    lr: float = 1e-3
    weight_decay: float = 0.01
    composers: int = 64  # composers per batch (each with ≥ 2 training groups)
    per_composer: int = 4  # pieces per composer, from different groups where it has them
    temperature: float = 0.1
    branch_dropout: float = 0.3  # chance that a piece's step drops one branch (half each)
    branches: str = "both"  # both | vit (ViT only, whole-piece head) | stats (statistics only)
    hidden: int = 128
    excerpts: int = 3  # fixed random excerpts per training piece besides the whole piece
    performed: int = 0  # renditions per training piece played otherwise (piece_augment.py)
    val_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.branches not in BRANCHES:
            raise ValueError(f"branches must be one of {BRANCHES}, got {self.branches!r}")
        if not 0.0 <= self.branch_dropout < 1.0:
            raise ValueError(f"branch_dropout must be in [0, 1), got {self.branch_dropout}")
        if self.performed < 0 or self.excerpts < 0:
            raise ValueError("excerpts and performed must be at least 0")
        for name in ("steps", "composers", "per_composer", "hidden", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.per_composer < 2:
            raise ValueError("per_composer must be at least 2 (a positive per anchor)")


class _Sampler:
    """Batches of ``composers`` × ``per_composer`` views: composers with at least two groups,
    pieces from different groups where the composer has enough of them."""

    def __init__(
        self, views: Views, composers: np.ndarray, groups: np.ndarray, c: HeadConfig
    ) -> None:
        self.c = c
        by_piece: dict[int, list[int]] = {}
        for v, p in enumerate(views.piece):
            by_piece.setdefault(int(p), []).append(v)
        self.views_of = by_piece
        self.by_composer: dict[int, dict[int, list[int]]] = {}
        for p in range(len(composers)):
            self.by_composer.setdefault(int(composers[p]), {}).setdefault(
                int(groups[p]), []
            ).append(p)
        self.eligible = [k for k, g in self.by_composer.items() if len(g) >= 2]
        if len(self.eligible) < 2:
            raise ValueError("the training side needs at least two composers with two groups each")

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        n = min(self.c.composers, len(self.eligible))
        picked = rng.choice(self.eligible, size=n, replace=False)
        out = []
        for k in picked:
            groups = list(self.by_composer[int(k)].values())
            order = rng.permutation(len(groups))
            for j in range(self.c.per_composer):
                members = groups[order[j % len(groups)]]
                p = members[int(rng.integers(len(members)))]
                vs = self.views_of[p]
                out.append(vs[int(rng.integers(len(vs)))])
        return np.asarray(out, np.int64)


def validation_auc(z: np.ndarray, composers: np.ndarray, groups: np.ndarray) -> float:
    """AUC of cosine similarity for same composer over every pair of pieces in different
    groups (each pair counted once)."""
    i, j = np.triu_indices(len(z), k=1)
    keep = groups[i] != groups[j]
    i, j = i[keep], j[keep]
    y = (composers[i] == composers[j]).astype(np.int64)
    if y.min() == y.max():
        return float("nan")
    d = 1.0 - np.einsum("nd,nd->n", z[i], z[j])
    return roc_auc(d, y)


def _branch_masks(n: int, c: HeadConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    keep_vit, keep_stats = torch.ones(n), torch.ones(n)
    if c.branches == "both" and c.branch_dropout > 0:  # one-branch models mask themselves
        r = torch.rand(n, generator=gen)
        keep_vit[r < c.branch_dropout / 2] = 0.0
        keep_stats[(r >= c.branch_dropout / 2) & (r < c.branch_dropout)] = 0.0
    return keep_vit, keep_stats


def train_head(
    source: str | Path,
    data: str | Path,
    out: str | Path,
    config: HeadConfig = HeadConfig(),
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Train the statistics branch and whole-piece head on ``source``'s fixed encoder; write
    a run directory at ``out`` (see the module docstring). Returns ``out``."""
    t_start = time.perf_counter()
    run = Run.open(source)
    out = Path(out)
    if (out / CONFIG).is_file() and (out / "model.safetensors").is_file():
        raise ValueError(f"{out}: already holds a run; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    if (run.tensor.frame_ms, run.tensor.low_note) != (FRAME_S * 1000.0, LOW_NOTE) or (
        run.tensor.binary or not run.tensor.decay
    ):
        raise ValueError(
            f"{source}: the statistics read 50 ms frames from F1 with decaying values (the "
            f"default tensors); this run's are {run.tensor}"
        )
    with TensorCache(data) as cache:
        run.check_tensors(cache.config, data)
        rows = cache.pieces()
        split = run.split(rows)
        run.check_split(split, rows)
        sides = {s: [rows[i] for i in split[s]] for s in ("train", "val")}
        tensors = {s: [cache.load(r) for r in sides[s]] for s in sides}
        stats = {s: cached_stats(cache, sides[s]) for s in sides}
    encoder = run.encoder()
    names = {c: i for i, c in enumerate(sorted({r.composer for r in rows}))}
    group_ids: dict[str, int] = {}
    lab = {s: np.array([names[r.composer] for r in sides[s]]) for s in sides}
    grp = {
        s: np.array([group_ids.setdefault(r.group, len(group_ids)) for r in sides[s]])
        for s in sides
    }
    if progress:
        progress("features", 0, 2)
    all_tensors = tensors["train"] + tensors["val"]
    if config.branches == "stats":  # the ViT branch is never read: skip the encoder's pass
        windows = piece_windows(all_tensors, run.crop_frames, run.hop_frames)
        feats = np.zeros((len(windows), run.model.d_model), np.float32)
    else:
        keys = [r.sha256 or r.path for r in sides["train"] + sides["val"]]
        feats, windows = window_features_cached(run, encoder, all_tensors, keys)
    n_train = len(tensors["train"])
    owner = np.array([w.piece for w in windows])
    train_w = owner < n_train
    train_windows = [w for w, t in zip(windows, train_w, strict=True) if t]
    val_windows = [
        type(w)(w.piece - n_train, w.start, w.valid)
        for w, t in zip(windows, train_w, strict=True)
        if not t
    ]
    rng = np.random.default_rng(config.seed)
    if progress:
        progress("features", 1, 2)
    views = build_views(
        tensors["train"],
        feats[train_w],
        train_windows,
        stats["train"],
        config.excerpts,
        rng,
        config.performed,
    )
    val_feats = pool_features(feats[~train_w], val_windows, len(tensors["val"]))
    if progress:
        progress("features", 2, 2)

    torch.manual_seed(config.seed)
    model_config = run.model.replace(
        stats_dim=STATS_DIM,
        stats_hidden=config.hidden,
        stats_version=STATS_VERSION,
        stats_branches=config.branches,
    )
    model = SiaViT(model_config)
    trunk = {k: v for k, v in encoder.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(trunk, strict=False)
    new = ("stats_", "stats_net.", "vit_net.", "head.")
    if unexpected or any(not k.startswith(new) for k in missing):
        raise ValueError(f"{source}: its encoder does not fit this model ({missing, unexpected})")
    whole = views.stats[views.whole]
    model.stats_mean.copy_(torch.from_numpy(whole.mean(0)))
    model.stats_std.copy_(torch.from_numpy(np.maximum(whole.std(0), 1e-3)))
    params = [
        p for n, p in model.named_parameters() if n.startswith(("stats_net.", "vit_net.", "head."))
    ]
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith(("stats_net.", "vit_net.", "head.")))
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.1
    )
    sampler = _Sampler(views, lab["train"], grp["train"], config)
    gen = torch.Generator().manual_seed(config.seed)
    vf = torch.from_numpy(views.features)
    vs = torch.from_numpy(views.stats)
    v_lab = torch.from_numpy(lab["train"][views.piece])
    v_grp = torch.from_numpy(grp["train"][views.piece])

    def evaluate() -> float:
        model.eval()
        with torch.inference_mode():
            z = model.forward_head(torch.from_numpy(val_feats), torch.from_numpy(stats["val"]))
        model.train()
        return validation_auc(z.numpy(), lab["val"], grp["val"])

    def fit_loop() -> tuple[list[dict[str, float]], int, float]:
        """The steps; leaves the best validation weights in ``model``."""
        t_head = time.perf_counter()
        log: list[dict[str, float]] = []
        best_auc, best_state, best_step = -1.0, None, 0
        model.train()
        for step in range(1, config.steps + 1):
            idx = torch.from_numpy(sampler(rng))
            keep_v, keep_s = _branch_masks(len(idx), config, gen)
            z = model.forward_head(vf[idx], vs[idx], keep_v, keep_s)
            loss = group_supcon(z, v_lab[idx], v_grp[idx], config.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % config.val_every == 0 or step == config.steps:
                auc = evaluate()
                now = time.perf_counter()
                log.append(
                    {
                        "step": step,
                        "loss": loss.item(),
                        "val_auc": auc,
                        "head_s": now - t_head,
                        "wall_s": now - t_start,
                    }
                )
                if auc > best_auc:
                    best_auc, best_step = auc, step
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if progress:
                    progress(f"head (validation AUC {auc:.3f})", step, config.steps)
        if best_state is None:
            raise ValueError(
                f"{source}: no validation AUC could be measured (its validation side needs "
                "pieces of at least two composers in different groups)"
            )
        model.load_state_dict(best_state)
        return log, best_step, best_auc

    with _one_thread():  # the head is small: one thread is as fast, and spares a busy machine
        log, best_step, best_auc = fit_loop()
    model.eval()
    _write_run(run, out, model, config, log, best_step, best_auc)
    return out


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _write_run(
    run: Run,
    out: Path,
    model: SiaViT,
    config: HeadConfig,
    log: list[dict[str, float]],
    best_step: int,
    best_auc: float,
) -> None:
    stored = json.loads((run.root / CONFIG).read_text())
    stored["model"] = model.config.to_dict()
    stored["train"]["out"] = str(out)
    stored["head"] = {
        **asdict(config),
        "trunk": str(run.root),
        "trunk_weights_sha256": run.weights_sha256(),
    }
    shutil.copyfile(run.split_path, out / SPLIT)
    save_weights(model, out / "model.safetensors", head_step=best_step, head_val_auc=best_auc)
    atomic_json(out / HEAD_LOG, {"best_step": best_step, "best_val_auc": best_auc, "log": log})
    atomic_json(out / CONFIG, stored, indent=1)
