"""The robust pool: a crash or a hang costs one item, never the run."""

from __future__ import annotations

import os
import time

from harmonixr._pool import run_robust


def _job(x: int) -> int:
    if x == 3:
        os._exit(7)  # the worker dies mid-item
    if x == 5:
        time.sleep(60)  # a hang
    if x == 7:
        raise ValueError("seven is bad")
    return x * x


def test_crash_hang_and_error_are_contained():
    outcomes = {o.index: o for o in run_robust(_job, range(10), workers=2, timeout=3)}
    assert sorted(outcomes) == list(range(10))
    for i in (0, 1, 2, 4, 6, 8, 9):
        assert outcomes[i].ok and outcomes[i].value == i * i
    assert not outcomes[3].ok and "exit code 7" in outcomes[3].error
    assert not outcomes[5].ok and outcomes[5].error == "timed out after 3 s"
    assert not outcomes[7].ok and outcomes[7].error == "ValueError: seven is bad"
