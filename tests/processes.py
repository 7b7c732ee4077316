"""Which processes a test session left behind: every process the tests start inherits the
session's mark in its environment, so whatever still carries it at the end outlived its test
(Linux: read from /proc; elsewhere nothing is found)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from pathlib import Path

SESSION_MARK = "HARMONIXR_TEST_SESSION"
# multiprocessing's own helpers, started once by this process and ended when it exits
HELPERS = ("from multiprocessing.forkserver import", "from multiprocessing.resource_tracker import")


def marked(mark: str) -> dict[int, str]:
    """pid → command line of the live processes, other than this one and its multiprocessing
    helpers, whose environment holds ``SESSION_MARK=mark``."""
    if not sys.platform.startswith("linux"):
        return {}
    needle = f"{SESSION_MARK}={mark}".encode()
    me = os.getpid()
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        proc = Path(entry.path)
        try:
            # a zombie's environment reads empty: only processes still running match
            if needle not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            # field 4 of stat, after the parenthesised name (which may hold spaces)
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if ppid == me and any(h in cmd for h in HELPERS):
            continue
        found[int(entry.name)] = cmd.strip()
    return found


def wait_gone(pids: list[int], seconds: float) -> None:
    """Return once every process in ``pids`` has ended or ``seconds`` have passed (woken by
    the kernel through pidfds where there are; otherwise by looking every 50 ms)."""
    deadline = time.monotonic() + seconds
    poller, fds, unwatched = select.poll(), [], []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
            poller.register(fds[-1], select.POLLIN)
        except ProcessLookupError:
            continue
        except (OSError, AttributeError):
            unwatched.append(pid)
    try:
        pending = set(fds)
        while (pending or unwatched) and (left := deadline - time.monotonic()) > 0:
            if pending:
                wait_ms = 50 if unwatched else left * 1000
                for fd, _ in poller.poll(max(1, int(wait_ms))):
                    pending.discard(fd)
                    poller.unregister(fd)
            else:
                time.sleep(min(0.05, left))
            unwatched = [p for p in unwatched if Path(f"/proc/{p}").exists()]
    finally:
        for fd in fds:
            os.close(fd)


def reap_orphans(mark: str, grace: float = 5.0) -> list[tuple[int, str]]:
    """The marked processes still running after ``grace`` seconds, which are then killed."""
    first = marked(mark)
    if not first:
        return []
    wait_gone(list(first), grace)
    left = marked(mark)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return sorted(left.items())
