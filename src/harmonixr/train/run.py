"""``train(config) -> run_dir``: data, split, Lightning trainer, checkpoints, TensorBoard.

One module, over 400 lines: the run directory's writer (``config.json``, ``split.json``,
checkpoints, the exported weights) and the Lightning callbacks that write it must agree on
when a file is final, which is what makes ``--resume`` safe; ``rundir.Run`` reads it."""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from harmonixr._files import atomic_json
from harmonixr.data.cache import TensorCache
from harmonixr.data.pairs import (
    ComposerBatchDataset,
    PairDataset,
    PieceSet,
    StepSampler,
    centre_crop,
    protocol_pair_sets,
)
from harmonixr.data.splits import load_split, make_split, save_split, without_recurring
from harmonixr.model.io import WEIGHTS, save_weights
from harmonixr.train.config import TrainConfig, build_model_config, check_resume
from harmonixr.train.module import SiameseModule, ValData
from harmonixr.train.quiet import StepsProgressBar, quiet_lightning
from harmonixr.train.rundir import CONFIG, SPLIT, Run


def last_checkpoint(ckpt_dir: Path) -> Path | None:
    """The most recently written checkpoint of a run, or None."""
    found = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    return found[-1] if found else None


def prune_checkpoints(ckpt_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints of each kind (``step-``, ``val-``), by
    global step, including those an earlier session of a resumed run left; returns the
    deleted files."""
    kinds: dict[str, list[tuple[int, Path]]] = {}
    for path in ckpt_dir.glob("*.ckpt"):
        m = re.fullmatch(r"(step|val)-step=(\d+)(-v\d+)?", path.stem)
        if m:
            kinds.setdefault(m.group(1), []).append((int(m.group(2)), path))
    gone = []
    for found in kinds.values():
        found.sort(key=lambda e: (e[0], e[1].stat().st_mtime_ns))
        for _, path in found[: max(0, len(found) - keep)]:
            path.unlink(missing_ok=True)
            gone.append(path)
    return gone


class NoValidationWarning(UserWarning):
    """The validation split cannot score the model (no same-composer pairs)."""


def _warn_without_validation(val: ValData | None, val_set: PieceSet, config: TrainConfig) -> None:
    """Say at the start, not silently at the end, that validation cannot score the model."""
    if val is not None and int(val.pseudo.y.sum()) > 0:
        return
    n, composers = len(val_set), len(np.unique(val_set.composers))
    msg = (
        f"{config.out}: the validation split ({n} pieces, {composers} composers) holds no two "
        "pieces by one composer from different works, so validation AUC and threshold cannot "
        "be computed (and export='best' has nothing to choose by; the last weights are "
        "written). Give validation more of the corpus (a --config TOML with [train] "
        "split_fractions = [0.7, 0.2, 0.1]) or use a corpus with several works per composer."
    )
    warnings.warn(msg, NoValidationWarning, stacklevel=3)


class CentreCrops(Dataset):
    def __init__(self, pieces: PieceSet, crop: int) -> None:
        self.pieces, self.crop = pieces, crop

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x, n = centre_crop(self.pieces.tensors[i], self.crop)
        return {"x": torch.from_numpy(x), "len": n, "index": i}


class PairData(L.LightningDataModule):
    """Builds the loaders once the trainer knows this process's rank."""

    def __init__(self, config: TrainConfig, train: PieceSet, val: ValData | None) -> None:
        super().__init__()
        self.config, self.train_set, self.val = config, train, val

    def _workers(self) -> int:
        if self.config.num_workers >= 0:
            return self.config.num_workers
        from lightning.pytorch.accelerators import CPUAccelerator

        on_cpu = self.trainer is None or isinstance(self.trainer.accelerator, CPUAccelerator)
        return 0 if on_cpu else 4

    def train_dataloader(self) -> DataLoader:
        c, rank, world = self.config, self.trainer.global_rank, self.trainer.world_size
        workers = self._workers()
        if c.loss == "supcon":
            p = min(c.supcon_composers, c.batch_size // 2)
            ds = ComposerBatchDataset(self.train_set, c.crop_frames, p, c.batch_size // p, c.seed)
            if self.trainer.is_global_zero:
                print(ds.summary(), file=sys.stderr, flush=True)
            sampler = StepSampler(c.steps_per_epoch * world, rank, world)
            return DataLoader(
                ds, batch_size=None, sampler=sampler, num_workers=workers, persistent_workers=False
            )
        ds = PairDataset(self.train_set, c.crop_frames, c.seed, c.balanced, c.p_same)
        pairs = max(1, c.batch_size // 2)  # two crops per pair
        sampler = StepSampler(c.steps_per_epoch * pairs * world, rank, world)
        return DataLoader(
            ds, batch_size=pairs, sampler=sampler, num_workers=workers, drop_last=True
        )

    def val_dataloader(self) -> DataLoader:
        if self.val is None:
            return []  # type: ignore[return-value]
        return DataLoader(
            CentreCrops(self.val.pieces, self.config.crop_frames), batch_size=32, num_workers=0
        )


class ExportBest(L.Callback):
    """Writes ``model.safetensors`` whenever validation AUC improves (rank 0)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.best = run_dir, float("-inf")

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or module.config.export != "best":
            return
        auc = trainer.callback_metrics.get("val/auc")
        if auc is None or not trainer.is_global_zero:
            return
        auc = float(auc)
        if auc > self.best:
            self.best = auc
            metrics = {
                k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
            }
            save_weights(
                _validated_encoder(trainer, module),
                self.run_dir / WEIGHTS,
                step=trainer.global_step,
                epoch=trainer.current_epoch,
                metrics=metrics,
            )

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best = float(state["best"])


def _validated_encoder(trainer: L.Trainer, module: L.LightningModule):
    """The encoder whose weights validation just measured: the moving average once it exists
    (Lightning swaps the raw weights back before ``on_validation_end``), else the module's."""
    from lightning.pytorch.callbacks import WeightAveraging

    for cb in trainer.callbacks:
        avg = getattr(cb, "_average_model", None)
        if isinstance(cb, WeightAveraging) and avg is not None and int(avg.n_averaged) > 0:
            return avg.module.encoder
    return module.encoder


def late_ema(decay: float, start_step: int) -> L.Callback:
    """An exponential moving average of the weights that starts at ``start_step`` from a copy of
    the weights there (not from the random initialisation, which a plain EMA keeps with weight
    decay^steps), validates and exports the average once it exists."""
    from lightning.pytorch.callbacks import WeightAveraging
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    class LateEMA(WeightAveraging):
        def __init__(self) -> None:
            super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay))
            self.start_step = start_step

        def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None):
            return step_idx is not None and step_idx >= self.start_step

        def _started(self) -> bool:
            avg = self._average_model
            return avg is not None and int(avg.n_averaged) > 0

        def on_validation_epoch_start(self, trainer, pl_module) -> None:
            self._swapped = self._started()
            if self._swapped:
                super().on_validation_epoch_start(trainer, pl_module)

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if getattr(self, "_swapped", False):
                super().on_validation_epoch_end(trainer, pl_module)
            self._swapped = False

        def on_train_end(self, trainer, pl_module) -> None:
            if self._started():
                super().on_train_end(trainer, pl_module)

    return LateEMA()


class ValidationLog(L.Callback):
    """One line per validation on rank 0 (what a background run's log file shows)."""

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = {
            k.removeprefix("val/"): float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val/")
        }
        if not m:
            return
        loss = trainer.callback_metrics.get("train/loss")
        parts = [f"step {trainer.global_step}", f"epoch {trainer.current_epoch}"]
        if loss is not None:
            parts.append(f"train loss {float(loss):.3f}")
        parts += [f"{k} {v:.3f}" for k, v in sorted(m.items())]
        print(" | ".join(parts), file=sys.stderr, flush=True)


class DDPSyncCheck(L.Callback):
    """At the end of a multi-process fit, compares every rank's weights and writes
    ``ddp_sync.json`` (largest difference of per-tensor sums across ranks)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.world_size < 2:
            return
        params = [p.detach().double() for p in module.encoder.parameters()]
        vec = torch.stack([t.sum() for t in params] + [t.pow(2).sum() for t in params])
        gathered = module.all_gather(vec.float())  # (world, n)
        if trainer.is_global_zero:
            diff = float((gathered - gathered[0]).abs().max())
            record = {"world_size": trainer.world_size, "max_abs_diff": diff}
            atomic_json(self.run_dir / "ddp_sync.json", {**record, "step": trainer.global_step})


def make_val_data(pieces: PieceSet, config: TrainConfig) -> ValData | None:
    if len(pieces) < 2 or len(np.unique(pieces.composers)) < 2:
        return None
    c, g = pieces.composers, pieces.groups
    pseudo, sets = protocol_pair_sets(c, g, c, g, config.val_pairs, config.seed)
    return ValData(pieces=pieces, pseudo=pseudo, sets=sets)


def _precision(config: TrainConfig) -> str:
    if config.precision != "auto":
        return config.precision
    wants_cuda = config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if wants_cuda else "32-true"


def train(
    config: TrainConfig,
    model_overrides: dict[str, Any] | None = None,
    resume: bool = False,
    callbacks: list[L.Callback] | None = None,
) -> Path:
    """Train SiaViT on a tensor cache; returns the run directory (docs/architecture.md)."""
    if not config.data or not config.out:
        raise ValueError("training needs a cache (--data) and a run directory (--out)")
    # recorded absolute, so evaluate/index find the cache from wherever they run
    config = config.replace(data=str(Path(config.data).resolve()))
    run_dir = Path(config.out)
    ckpt_dir = run_dir / "checkpoints"
    last = last_checkpoint(ckpt_dir)
    saved = run_dir / CONFIG
    if resume:
        if last is None:
            raise ValueError(f"{run_dir}: nothing to resume (no checkpoints)")
        try:
            recorded_run = Run.open(run_dir, strict=True)
        except ValueError as exc:
            raise ValueError(f"{run_dir}: cannot be resumed: {exc}") from None
        model_config, recorded = recorded_run.model, recorded_run.train
        check_resume(recorded, config, saved, model_config, model_overrides)
    else:
        if last is not None:
            raise ValueError(f"{run_dir}: already holds a run; pass --resume or use another --out")
        model_config = build_model_config(config.preset, model_overrides)
    L.seed_everything(config.seed, workers=True, verbose=False)

    with TensorCache(config.data) as cache:
        rows = cache.pieces()
        tensor_config = cache.config
        if not rows:
            raise ValueError(f"{config.data}: the cache holds no usable pieces")
        if abs(tensor_config.frame_ms - config.frame_ms) > 1e-9:
            config = config.replace(frame_ms=tensor_config.frame_ms)
        split_path = run_dir / SPLIT
        if split_path.is_file():
            split = load_split(split_path, rows)
        elif config.split_file:
            split = load_split(config.split_file, rows)
        else:
            split = make_split(rows, config.split, config.split_fractions, config.seed)
        composers = sorted({r.composer for r in rows})
        train_set = PieceSet.from_cache(cache, [rows[i] for i in split["train"]], composers)
        # validation chooses the checkpoint: never on music the training side holds
        val_rows = [rows[i] for i in without_recurring(split, rows)[0]["val"]]
        val_set = PieceSet.from_cache(cache, val_rows, composers)

    rank_zero = all(  # torchrun sets RANK, Lightning's launcher LOCAL_RANK, SLURM SLURM_PROCID
        int(os.environ.get(k, "0")) == 0 for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID")
    )
    if rank_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not split_path.is_file():
            save_split(
                split_path,
                rows,
                split,
                mode=config.split,
                seed=config.seed,
                fractions=list(config.split_fractions),
                cache=str(config.data),
            )
        record = {
            "train": config.to_dict(),
            "model": model_config.to_dict(),
            "tensor": tensor_config.to_dict(),
            "composers": composers,
        }
        atomic_json(saved, record, indent=1)  # other ranks may be reading it

    val = make_val_data(val_set, config)
    if rank_zero:
        _warn_without_validation(val, val_set, config)
    module = SiameseModule(model_config, config, val)
    data = PairData(config, train_set, val)

    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    # rolling checkpoints, the newest keep_checkpoints of each kind: every N steps, and at each
    # validation; --resume takes the newest
    keep = config.keep_checkpoints
    every = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="step-{step}",
        monitor="step",
        mode="max",
        save_top_k=keep,
        every_n_train_steps=config.checkpoint_every_steps,
    )
    at_val = ModelCheckpoint(
        dirpath=ckpt_dir, filename="val-{step}", monitor="step", mode="max", save_top_k=keep
    )
    interactive = sys.stderr.isatty()
    cbs: list[L.Callback] = [every, at_val, ExportBest(run_dir), DDPSyncCheck(run_dir)]
    if config.ema > 0:
        cbs.append(late_ema(config.ema, int(config.total_steps * config.ema_start)))
    if interactive:
        epochs = -(-config.total_steps // config.steps_per_epoch)
        cbs.append(StepsProgressBar(epochs))
    else:
        cbs.append(ValidationLog())
    cbs += list(callbacks or [])
    n_proc = config.devices * config.num_nodes
    strategy = config.strategy
    if strategy == "auto" and n_proc > 1:
        strategy = "ddp"
    with quiet_lightning():
        trainer = L.Trainer(
            accelerator=config.accelerator,
            devices=config.devices,
            num_nodes=config.num_nodes,
            strategy=strategy,
            precision=_precision(config),
            max_steps=config.total_steps,
            max_epochs=-1,  # bounded by max_steps; an epoch bound breaks resuming at an epoch end
            limit_train_batches=config.steps_per_epoch,
            check_val_every_n_epoch=config.val_every_epochs,
            num_sanity_val_steps=0,
            gradient_clip_val=config.grad_clip,
            logger=TensorBoardLogger(str(run_dir), name="tb", version="", default_hp_metric=False),
            callbacks=cbs,
            use_distributed_sampler=False,
            log_every_n_steps=min(10, config.steps_per_epoch),
            enable_model_summary=False,
            enable_progress_bar=interactive,
            default_root_dir=str(run_dir),
        )
        trainer.fit(
            module,
            datamodule=data,
            ckpt_path=str(last) if resume and last else None,
            weights_only=True if resume else None,
        )
    if trainer.is_global_zero:
        # export "last" (the default), or "best" that never measured an AUC: the last weights
        if config.export == "last" or not (run_dir / WEIGHTS).is_file():
            metrics = {
                k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
            }
            save_weights(
                module.encoder,
                run_dir / WEIGHTS,
                step=trainer.global_step,
                epoch=trainer.current_epoch,
                metrics=metrics,
            )
        prune_checkpoints(ckpt_dir, keep)
        _write_projector(run_dir, val_set, [rows[i] for i in split["val"]], config, trainer)
    return run_dir


def _write_projector(run_dir: Path, val_set: PieceSet, val_rows, config, trainer) -> None:
    """The validation pieces' whole-piece embeddings in TensorBoard's projector, with composer
    and title (what the exported weights make of pieces they never trained on)."""
    if not len(val_set):
        return
    from harmonixr.train.projector import write_projector

    z = Run.open(run_dir).embed(val_set.tensors)
    write_projector(
        run_dir, z, [(r.composer, r.title) for r in val_rows], tag="val", step=trainer.global_step
    )
