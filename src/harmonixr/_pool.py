"""A small process pool that survives its workers.

``concurrent.futures`` loses every pending task when one worker segfaults and has no per-task
timeout. Parsing untrusted MIDI (symusic is C++) or converting music21 scores (some take minutes)
needs both: each item either returns a value, raises (reported as text), crashes its worker, or
runs past its time limit; in the last two cases the worker is killed and replaced and the pool
carries on with the next item.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """What became of one item: ``ok`` with ``value``, or not ok with ``error`` text and a
    ``failure`` kind: ``"error"`` (the function raised), ``"crashed"`` or ``"timeout"``."""

    index: int
    ok: bool
    value: Any = None
    error: str = ""
    failure: str = ""


def _default_context() -> mp.context.BaseContext:
    # forkserver gives fresh, thread-free workers quickly on POSIX; spawn everywhere else.
    if "forkserver" in mp.get_all_start_methods():
        return mp.get_context("forkserver")
    return mp.get_context("spawn")


def _die_with_parent(parent_pid: int | None) -> None:
    """On Linux, ask the kernel to kill this worker when its parent process dies (even by
    SIGKILL, which runs no clean-up there): the pool's process when forked, the forkserver
    (which ends with the pool's process) otherwise. Elsewhere the closed pipe ends it."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)  # forked, and the pool's process died before the request took effect


def _worker_main(
    conn: Connection,
    func: Callable[[Any], Any],
    parent_end: Connection | None = None,
    parent_pid: int | None = None,
) -> None:
    # A forked worker inherits the parent's end of its own pipe: closed here, so that the pipe
    # reports EOF once the parent is gone; and the worker asks to die with its parent.
    if parent_end is not None:
        parent_end.close()
    _die_with_parent(parent_pid)
    # Workers ignore SIGINT so Ctrl-C is handled once, by the parent.
    try:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ImportError, ValueError):
        pass
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, item = msg
        try:
            result = (index, True, func(item), "")
        except Exception as exc:  # reported to the parent as text, never raised here
            text = f"{type(exc).__name__}: {exc}".strip()
            if os.environ.get("HARMONIXR_DEBUG"):
                text += "\n" + traceback.format_exc()
            result = (index, False, None, text)
        try:
            conn.send(result)
        except Exception as exc:  # e.g. an unpicklable result
            conn.send((index, False, None, f"result could not be sent: {exc}"))


class _Slot:
    def __init__(self, ctx: mp.context.BaseContext, func: Callable[[Any], Any]) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.conn = parent
        forked = ctx.get_start_method() == "fork"  # else the worker's parent is a server
        self.proc = ctx.Process(
            target=_worker_main,
            args=(child, func, parent, os.getpid() if forked else None),
            daemon=True,
        )
        self.proc.start()
        child.close()
        self.index: int | None = None
        self.deadline = float("inf")

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(timeout=2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.conn.close()


class RobustPool:
    """Workers that outlive one batch: :meth:`imap` may be called again and again (a service
    parsing one upload after another pays for a process start once, not per file). A worker
    that crashed, hung or was abandoned mid-item is replaced before its next item."""

    def __init__(
        self,
        func: Callable[[Any], Any],
        *,
        workers: int = 2,
        timeout: float | None = None,
        context: mp.context.BaseContext | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.func, self.timeout = func, timeout
        self.ctx = context or _default_context()
        self.slots = [_Slot(self.ctx, func) for _ in range(workers)]

    def imap(self, items: Iterable[Any]) -> Iterator[Outcome]:
        """An :class:`Outcome` per item, in completion order (see :func:`run_robust`)."""
        ctx, func, slots = self.ctx, self.func, self.slots
        source = iter(enumerate(items))
        exhausted = False
        limit = self.timeout if self.timeout is not None else float("inf")
        try:
            while True:
                for i, slot in enumerate(slots):
                    if slot.index is None and not exhausted:
                        nxt = next(source, None)
                        if nxt is None:
                            exhausted = True
                            break
                        if not slot.proc.is_alive():
                            slot.kill()
                            slot = slots[i] = _Slot(ctx, func)
                        slot.index = nxt[0]
                        slot.deadline = time.monotonic() + limit
                        slot.conn.send(nxt)
                busy = [s for s in slots if s.index is not None]
                if not busy:
                    return
                wait_for = min(s.deadline for s in busy) - time.monotonic()
                handles: list[Any] = [s.conn for s in busy] + [s.proc.sentinel for s in busy]
                timeout = None if wait_for == float("inf") else max(0, wait_for)
                ready = wait(handles, timeout=timeout)
                now = time.monotonic()
                for i, slot in enumerate(slots):
                    if slot.index is None:
                        continue
                    index = slot.index
                    if slot.conn in ready:
                        try:
                            _, ok, value, error = slot.conn.recv()
                            failure = "" if ok else "error"
                        except (EOFError, OSError):
                            ok, value, error, failure = False, None, _death_message(slot), "crashed"
                            slot.kill()
                            slots[i] = _Slot(ctx, func)
                        else:
                            slot.index = None
                        yield Outcome(index, ok, value, error, failure)
                    elif slot.proc.sentinel in ready:
                        error = _death_message(slot)
                        slot.kill()
                        slots[i] = _Slot(ctx, func)
                        yield Outcome(index, False, None, error, "crashed")
                    elif now >= slot.deadline:
                        slot.kill()
                        slots[i] = _Slot(ctx, func)
                        yield Outcome(index, False, None, f"timed out after {limit:g} s", "timeout")
        finally:
            for slot in slots:  # abandoned mid-item: its answer would confuse the next batch
                if slot.index is not None:
                    slot.kill()
                    slot.index = None

    def close(self) -> None:
        for slot in self.slots:
            if slot.index is None:
                slot.stop()
            else:
                slot.kill()

    def __enter__(self) -> RobustPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_robust(
    func: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    workers: int = 2,
    timeout: float | None = None,
    context: mp.context.BaseContext | None = None,
) -> Iterator[Outcome]:
    """Apply ``func`` to each item in worker processes, yielding an :class:`Outcome` per item.

    Results arrive in completion order; ``Outcome.index`` is the item's position. ``func`` must
    be importable (a module-level function). A worker that dies or exceeds ``timeout`` seconds is
    replaced and its item reported as failed; the other items are unaffected.
    """
    with RobustPool(func, workers=workers, timeout=timeout, context=context) as pool:
        yield from pool.imap(items)


def _death_message(slot: _Slot) -> str:
    slot.proc.join(timeout=5)
    code = slot.proc.exitcode
    if code is not None and code < 0:
        return f"parser process crashed (signal {-code})"
    return f"parser process died (exit code {code})"
