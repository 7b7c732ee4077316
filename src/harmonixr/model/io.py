"""Encoder weights as safetensors with the ModelConfig in the file's metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from harmonixr._files import atomic_write
from harmonixr.model.config import ModelConfig
from harmonixr.model.encoder import SiaViT

WEIGHTS = "model.safetensors"


def save_weights(encoder: SiaViT, path: str | Path, **info: Any) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    meta = {"model_config": json.dumps(encoder.config.to_dict())}
    meta.update({k: json.dumps(v) for k, v in info.items()})
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def load_encoder(run_or_file: str | Path, map_location: str | torch.device = "cpu") -> SiaViT:
    """Rebuild the encoder from a run directory (its ``model.safetensors``) or a weights file,
    in eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(run_or_file)
    if path.is_dir():
        path = path / WEIGHTS
    if not path.is_file():
        raise ValueError(f"{path}: no such weights file (has the run validated yet?)")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if "model_config" not in meta:
        raise ValueError(f"{path}: no model_config in the file's metadata")
    encoder = SiaViT(ModelConfig.from_dict(json.loads(meta["model_config"])))
    encoder.load_state_dict(load_file(str(path), device=str(map_location)))
    return encoder.eval().to(map_location)


def weights_info(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return {k: json.loads(v) for k, v in meta.items()}
