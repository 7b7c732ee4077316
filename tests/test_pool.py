"""The robust pool: a crash or a hang costs one item, never the run."""

from __future__ import annotations

import os
import time

from harmonixr._pool import RobustPool, run_robust


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


def _pid(x: int) -> int:
    if x < 0:
        os._exit(1)
    return os.getpid()


def test_a_pool_keeps_its_workers_between_batches_and_replaces_a_dead_one():
    with RobustPool(_pid, workers=1, timeout=10) as pool:
        (first,) = pool.imap([0])
        (again,) = pool.imap([1])
        assert first.ok and again.value == first.value  # the same process answered both
        (dead,) = pool.imap([-1])
        assert not dead.ok and dead.failure == "crashed"
        (after,) = pool.imap([2])
        assert after.ok and after.value != first.value
    with RobustPool(_pid, workers=2, timeout=10) as pool:
        batch = pool.imap([3, 4])
        next(batch)
        batch.close()  # abandoned while the other worker is busy: it is replaced
        assert sum(s.proc.is_alive() for s in pool.slots) == 1
        assert sorted(o.index for o in pool.imap([5, 6])) == [0, 1]
