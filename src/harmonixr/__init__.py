"""Harmonixr: MIDI → composer-aware embeddings (SiaViT) for music attribution and search."""

from harmonixr.midi.corpora import Piece, read_corpus
from harmonixr.midi.load import MidiError, load_score, safe_load
from harmonixr.midi.tensorize import TensorConfig, Tensorized, tensorize, tensorize_with_stats

__version__ = "0.1.0"

__all__ = [
    "MidiError",
    "Piece",
    "TensorConfig",
    "Tensorized",
    "__version__",
    "load_score",
    "read_corpus",
    "safe_load",
    "tensorize",
    "tensorize_with_stats",
]
