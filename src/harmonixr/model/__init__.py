"""SiaViT: layers, encoder, losses; knows tensors, not files (but its own weights)."""

from harmonixr.model.config import PRESETS, ModelConfig, preset
from harmonixr.model.encoder import SiaViT
from harmonixr.model.io import load, save_weights

__all__ = ["PRESETS", "ModelConfig", "SiaViT", "load", "preset", "save_weights"]
