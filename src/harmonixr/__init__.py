"""Harmonixr: MIDI → composer-aware embeddings (SiaViT) for music attribution and search."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harmonixr.midi.corpora import Piece, read_corpus
from harmonixr.midi.load import MidiError, load_score, safe_load, tensorize, tensorize_with_stats
from harmonixr.midi.tensorize import TensorConfig, Tensorized

if TYPE_CHECKING:
    from harmonixr.api import Harmonixr
    from harmonixr.results import Attribution, Embedded, Match, Passage, Verdict

__version__ = "0.1.0"

# imported on first use, so that `import harmonixr` does not load torch
_LAZY = {
    "Attribution": "harmonixr.results",
    "Embedded": "harmonixr.results",
    "Harmonixr": "harmonixr.api",
    "Match": "harmonixr.results",
    "Passage": "harmonixr.results",
    "Verdict": "harmonixr.results",
}

__all__ = [
    "Attribution",
    "Embedded",
    "Harmonixr",
    "Match",
    "MidiError",
    "Passage",
    "Piece",
    "TensorConfig",
    "Tensorized",
    "Verdict",
    "__version__",
    "load_score",
    "read_corpus",
    "safe_load",
    "tensorize",
    "tensorize_with_stats",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'harmonixr' has no attribute {name!r}")
