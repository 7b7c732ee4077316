"""``ModelConfig``: everything that shapes the encoder, frozen and saved beside the weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

WRAP_MODES = ("helix", "circular", "zeros")


def reject_unknown(cls: type, d: dict[str, Any], what: str) -> None:
    """Raise if ``d`` names a field the dataclass ``cls`` does not have (a typo in a config)."""
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} keys: {', '.join(sorted(unknown))}")


@dataclass(frozen=True)
class ModelConfig:
    """SiaViT's shape. The stem is a wraparound convolution whose time kernel and stride are
    ``stem_time_stride`` frames (a patch embedding along time: every frame is seen, and no wide
    layer ever runs at 50 ms resolution), then a max-pool of ``stem_pool``. ``stages`` gives
    the channels of the residual blocks (two wraparound convolutions each), each followed by a
    max-pool of ``pools[i]`` over (pitch class, octave, time)."""

    in_channels: int = 1
    stem_channels: int = 16
    stem_time_stride: int = 8
    stem_pool: tuple[int, int, int] = (2, 1, 2)
    stages: tuple[int, ...] = (48,)
    pools: tuple[tuple[int, int, int], ...] = ((2, 2, 1),)
    kernel: int = 3
    wrap: str = "helix"
    d_model: int = 192
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 384
    embed_dim: int = 128
    conv_dropout: float = 0.1
    dropout: float = 0.1
    # the statistics branch (model/stats.py): 0 = ViT only (the crop head), else the length of
    # the whole-piece statistics vector fused with the ViT's pooled tokens before the head
    stats_dim: int = 0
    stats_hidden: int = 128
    stats_version: int = 0  # model.stats.STATS_VERSION the branch was trained on
    stats_branches: str = "both"  # both | vit | stats: which branches the head reads

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(int(c) for c in self.stages))
        object.__setattr__(self, "pools", tuple(tuple(int(v) for v in p) for p in self.pools))
        object.__setattr__(self, "stem_pool", tuple(int(v) for v in self.stem_pool))
        if self.wrap not in WRAP_MODES:
            raise ValueError(f"wrap must be one of {WRAP_MODES}, got {self.wrap!r}")
        if len(self.pools) != len(self.stages):
            raise ValueError(f"{len(self.stages)} stages need as many pools, got {len(self.pools)}")
        if any(len(p) != 3 or min(p) < 1 for p in (*self.pools, self.stem_pool)):
            raise ValueError(f"pools must be positive (pitch, octave, time) triples: {self.pools}")
        if self.kernel % 2 != 1:
            raise ValueError(f"kernel must be odd, got {self.kernel}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.stats_dim < 0 or self.stats_hidden < 1:
            raise ValueError("stats_dim must be ≥ 0 and stats_hidden ≥ 1")
        if self.stats_branches not in ("both", "vit", "stats"):
            raise ValueError(f"stats_branches must be both|vit|stats, got {self.stats_branches!r}")
        if self.stem_time_stride < 1:
            raise ValueError("stem_time_stride must be at least 1")
        pc, octv = self.grid_after_pools()
        if pc < 1 or octv < 1:
            raise ValueError(f"pools shrink the 12×6 grid to nothing: {self.pools}")

    def grid_after_pools(self) -> tuple[int, int]:
        pc, octv = 12, 6
        for p, o, _ in (self.stem_pool, *self.pools):
            pc, octv = -(-pc // p), -(-octv // o)  # ceil mode
        return pc, octv

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = list(self.stages)
        d["pools"] = [list(p) for p in self.pools]
        d["stem_pool"] = list(self.stem_pool)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        reject_unknown(cls, d, "model config")
        d = dict(d)
        if "pools" in d:
            d["pools"] = tuple(tuple(p) for p in d["pools"])
        if "stem_pool" in d:
            d["stem_pool"] = tuple(d["stem_pool"])
        if "stages" in d:
            d["stages"] = tuple(d["stages"])
        return cls(**d)

    def replace(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    # tests and CI
    "tiny": ModelConfig(
        stem_channels=8,
        stem_pool=(2, 1, 2),
        stages=(16,),
        pools=((2, 2, 1),),
        d_model=64,
        n_layers=1,
        n_heads=2,
        d_ff=128,
        embed_dim=32,
    ),
    # the CPU default: 400 ms patches pooled to 800 ms, one residual stage of 48 channels on a
    # 6×6 grid, a 2-layer transformer over 75 tokens (16.6 ms/example fwd+bwd on 2 cores,
    # 60 s crops: README's table from bench/train.py)
    "small": ModelConfig(),
    # the original project's scale: conv channels 32/64/128, d_model 512, 3 layers, 8 heads
    "base": ModelConfig(
        stem_channels=32,
        stem_time_stride=4,
        stem_pool=(1, 1, 1),
        stages=(64, 128),
        pools=((2, 1, 2), (2, 2, 2)),
        d_model=512,
        n_layers=3,
        n_heads=8,
        d_ff=1024,
        embed_dim=128,
    ),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
