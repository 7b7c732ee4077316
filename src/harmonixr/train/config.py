"""``TrainConfig``: how a run trains (the model's shape lives in ``ModelConfig``)."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from harmonixr.model.config import ModelConfig, preset, reject_unknown

LOSSES = ("contrastive", "supcon")
# what a resumed run may change: how long it trains and on what hardware, never what it learns
RESUMABLE = ("max_steps", "epochs", "devices", "num_nodes", "num_workers", "accelerator")


@dataclass(frozen=True)
class TrainConfig:
    data: str = ""
    out: str = ""
    preset: str = "small"
    loss: str = "supcon"  # measured better on ASAP than contrastive (README)
    epochs: int = 10
    max_steps: int = -1  # > 0 overrides epochs
    steps_per_epoch: int = 200
    crop_seconds: float = 30.0  # every config's; the run's crop is read from the run everywhere
    batch_size: int = 32  # crops per step: P·K (supcon) or 2 per pair (contrastive: B/2 pairs)
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    noise_sigma: float = 0.1
    velocity_gain: float = 0.0  # a: each crop's velocities × g, log g ~ U(−a, a) (recording level)
    time_stretch: float = 0.0  # a: each crop played f× slower, log f ~ U(−a, a) (tempo)
    velocity_curve: float = 0.0  # a: values v → v^γ per crop, log γ ~ U(−a, a) (touch curve)
    onset_jitter: int = 0  # each key of a crop shifted by up to ± this many frames (humanise)
    key_gain: float = 0.0  # a: each key of a crop × g, log g ~ U(−a, a) (humanise voicing)
    ema: float = 0.0  # > 0: validate and export an exponential moving average of the weights
    ema_start: float = 0.5  # …started from the weights at this fraction of the steps
    export: str = "last"  # model.safetensors: the last weights, or "best" by validation AUC
    balanced: bool = False
    p_same: float = 0.5
    margin_floor: float = 0.5
    margin_floor_growth: float = 0.1
    margin_floor_max: float = 1.0
    margin_momentum: float = 0.9
    static_margin: float = 1.0
    supcon_temperature: float = 0.1
    supcon_composers: int = 8  # P; K = batch_size // P
    split: str = "group"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_file: str = ""  # reuse a saved split.json
    val_pairs: int = 1000
    val_every_epochs: int = 1
    checkpoint_every_steps: int = 200
    keep_checkpoints: int = 1  # rolling checkpoints kept of each kind (every N steps, validation)
    seed: int = 0
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    num_workers: int = -1  # -1: 0 on CPU, 4 on accelerators
    precision: str = "auto"  # bf16-mixed on CUDA, 32 elsewhere
    frame_ms: float = 50.0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        positive = ("epochs", "steps_per_epoch", "batch_size", "devices", "num_nodes")
        for name in (*positive, "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.export not in ("last", "best"):
            raise ValueError(f"export must be 'last' or 'best', got {self.export!r}")
        if not 0.0 <= self.ema_start < 1.0:
            raise ValueError(f"ema_start must be in [0, 1), got {self.ema_start}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if min(self.velocity_gain, self.time_stretch, self.velocity_curve, self.key_gain) < 0:
            raise ValueError("velocity_gain, time_stretch, velocity_curve and key_gain must be ≥ 0")
        if self.onset_jitter < 0:
            raise ValueError(f"onset_jitter must be ≥ 0, got {self.onset_jitter}")
        if self.crop_seconds <= 0 or self.lr <= 0:
            raise ValueError("crop_seconds and lr must be positive")
        if self.loss == "supcon" and self.batch_size < 2 * 2:
            raise ValueError("supcon needs a batch of at least 2 composers × 2 crops")

    @property
    def crop_frames(self) -> int:
        return max(1, round(self.crop_seconds * 1000.0 / self.frame_ms))

    @property
    def total_steps(self) -> int:
        return self.max_steps if self.max_steps > 0 else self.epochs * self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["split_fractions"] = list(self.split_fractions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        reject_unknown(cls, d, "training config")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)


def load_toml(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(train settings, model settings) from a TOML file with optional ``[train]`` and
    ``[model]`` tables (top-level keys count as training settings)."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    model = data.pop("model", {})
    train = data.pop("train", {})
    return {**data, **train}, model


def build_model_config(name: str, overrides: dict[str, Any] | None = None) -> ModelConfig:
    base = preset(name)
    if not overrides:
        return base
    return ModelConfig.from_dict({**base.to_dict(), **overrides})


def merged_settings(
    data: str | Path,
    out: str | Path,
    *,
    stored: TrainConfig | None = None,
    toml: dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
) -> TrainConfig:
    """The settings a training run gets, later sources winning: a resumed run's recorded
    ``stored`` settings, then a TOML file's ``[train]`` table, then the flags given (``None``:
    not given); the cache and run directory last. ``train()`` then refuses a resumed run whose
    merged settings change what it learns."""
    settings = stored.to_dict() if stored is not None else {}
    settings.update(toml or {})
    settings.update({k: v for k, v in (flags or {}).items() if v is not None})
    settings.update({"data": str(data), "out": str(out)})
    return TrainConfig.from_dict(settings)


def check_resume(
    stored: TrainConfig,
    given: TrainConfig,
    where: str | Path,
    stored_model: ModelConfig | None = None,
    model_overrides: dict[str, Any] | None = None,
) -> None:
    """Refuse a resumed run whose settings differ from the recorded ones in anything but
    :data:`RESUMABLE` (the run directory itself may be spelled differently)."""
    differing = []
    for f in fields(TrainConfig):
        if f.name in RESUMABLE or f.name == "out":
            continue
        was, now = getattr(stored, f.name), getattr(given, f.name)
        same = Path(was).resolve() == Path(now).resolve() if f.name == "data" else was == now
        if not same:
            differing.append(f"{f.name} ({was!r} in the run, {now!r} now)")
    if stored_model is not None:
        recorded = stored_model.to_dict()
        wanted = ModelConfig.from_dict({**recorded, **(model_overrides or {})}).to_dict()
        differing += [
            f"model {k} ({recorded[k]!r} in the run, {wanted[k]!r} now)"
            for k in recorded
            if wanted[k] != recorded[k]
        ]
    if differing:
        msg = (
            f"{where}: --resume continues the run recorded there and cannot change "
            f"{'; '.join(differing)}. Only {', '.join(RESUMABLE)} may differ; "
            "start a new run (another --out) to change the rest"
        )
        raise ValueError(msg)
