"""Lightning's lines that are not ours, kept off the terminal so the project's own show.

Silenced, each by its exact text: the litlogger advertisement, torch's ``LeafSpec`` deprecation
raised inside Lightning's own code, the data-loader worker hint (we choose the workers), the
non-empty checkpoint folder of a resumed run, and the "Epoch n/-2" of the rich progress bar (a
run bounded by steps has ``max_epochs=-1``). Every other warning, and every warning from this
project, still shows.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.pytorch.callbacks import RichProgressBar

# warnings raised inside Lightning about Lightning or torch, not about this project's choices
_IGNORED_WARNINGS = (
    (r".*isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r".*does not have many workers", Warning),
    (r".*is an invalid version", Warning),
    # a resumed run writes into its own checkpoint folder (a fresh run refuses one that is not
    # empty before Lightning is asked)
    (r"Checkpoint directory .* exists and is not empty", Warning),
)
_LIGHTNING_INFO = "lightning.pytorch.utilities.rank_zero"


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith("💡 Tip") or "litlogger" in text)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Within this block (build the Trainer and fit inside it), Lightning's noise is dropped."""
    log = logging.getLogger(_LIGHTNING_INFO)
    adverts = _DropAdverts()
    log.addFilter(adverts)
    try:
        with warnings.catch_warnings():
            for message, category in _IGNORED_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        log.removeFilter(adverts)


class StepsProgressBar(RichProgressBar):
    """Lightning's rich bar, counting the epochs that ``max_steps`` implies (Lightning would
    print "Epoch 3/-2" for a run bounded by steps rather than epochs)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = max(1, epochs)

    def _get_train_description(self, current_epoch: int) -> str:
        text = f"Epoch {current_epoch}/{self.epochs - 1}"
        return f"{text:{len(self.validation_description)}}"
