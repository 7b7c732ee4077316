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


def test_workers_die_with_a_parent_killed_by_sigkill(tmp_path):
    """A parent killed with SIGKILL runs no clean-up; its parser workers must not live on."""
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from harmonixr.midi.load import parser_pool
            pool = parser_pool(workers=2)
            pool.imap([])  # nothing to do; the workers start with the pool
            print(" ".join(str(s.proc.pid) for s in pool.slots), flush=True)
            time.sleep(600)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().split()[2] != "Z"
        except FileNotFoundError:
            return False

    assert all(alive(p) for p in pids)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids), "orphaned parser workers"
