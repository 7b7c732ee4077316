"""SiaViT: layers, encoder, losses; knows tensors, not files (but its own weights)."""

from harmonixr.model.config import PRESETS, ModelConfig, preset
from harmonixr.model.encoder import SiaViT
from harmonixr.model.io import load_encoder, save_weights

__all__ = ["PRESETS", "ModelConfig", "SiaViT", "load_encoder", "preset", "save_weights"]
