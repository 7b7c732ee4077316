"""A small process pool that survives its workers.

``concurrent.futures`` loses every pending task when one worker segfaults and has no per-task
timeout. Parsing untrusted MIDI (symusic is C++) or converting music21 scores (some take minutes)
needs both: each item either returns a value, raises (reported as text), crashes its worker, or
runs past its time limit, past its memory ceiling, or is cancelled; in those cases the worker
is killed and replaced and the pool carries on with the next item.

Workers die with the pool's process, never with a thread of it: every worker is started by one
long-lived thread (:class:`_Forker`), because Linux's parent-death signal follows the *thread*
that forked a child. (Forked from a web server's worker threads, which retire after 10 s idle,
live parsers were killed between two uploads.)
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """What became of one item: ``ok`` with ``value``, or not ok with ``error`` text and a
    ``failure`` kind: ``"error"`` (the function raised), ``"crashed"``, ``"timeout"``,
    ``"memory"`` (past the memory ceiling, or a MemoryError) or ``"cancelled"``. ``peak``: the
    most memory the worker held over what it had when it started, as last seen (bytes; 0
    where not watched)."""

    index: int
    ok: bool
    value: Any = None
    error: str = ""
    failure: str = ""
    peak: int = 0


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


MEMORY_ERROR = "MemoryError"
POLL = 0.05  # seconds between looks at a busy worker's memory and its cancel flag


def _address_space_limit(memory: int | None) -> None:
    """A backstop to the parent's watch (:func:`_rss`): the address space this worker may add
    to what it has, twice its memory ceiling (address space is larger than memory touched), so
    that an allocation too fast for the watch fails here with a MemoryError."""
    if memory is None or not sys.platform.startswith("linux"):
        return
    import resource

    with contextlib.suppress(OSError, ValueError):
        size = _status("VmSize")
        if size:
            resource.setrlimit(resource.RLIMIT_AS, (size + 2 * memory, resource.RLIM_INFINITY))


def _worker_main(
    conn: Connection,
    func: Callable[[Any], Any],
    parent_end: Connection | None = None,
    parent_pid: int | None = None,
    memory: int | None = None,
) -> None:
    # A forked worker inherits the parent's end of its own pipe: closed here, so that the pipe
    # reports EOF once the parent is gone; and the worker asks to die with its parent.
    if parent_end is not None:
        parent_end.close()
    _die_with_parent(parent_pid)
    _address_space_limit(memory)
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
        except MemoryError:
            result = (index, False, None, MEMORY_ERROR)
        except Exception as exc:  # reported to the parent as text, never raised here
            text = f"{type(exc).__name__}: {exc}".strip()
            if os.environ.get("HARMONIXR_DEBUG"):
                text += "\n" + traceback.format_exc()
            result = (index, False, None, text)
        try:
            conn.send(result)
        except Exception as exc:  # e.g. an unpicklable result
            conn.send((index, False, None, f"result could not be sent: {exc}"))


class _Forker:
    """The one thread that starts worker processes, for every pool of this process: it lives
    as long as the process, so the parent-death signal that workers ask for (set relative to
    the thread that forked them) comes only when the process itself ends."""

    _lock = threading.Lock()
    _pid: int | None = None
    _jobs: queue.SimpleQueue[tuple[Any, threading.Event, list[BaseException]]]

    @classmethod
    def start(cls, proc: Any) -> None:
        with cls._lock:
            if cls._pid != os.getpid():  # first use, or in a process forked from one that had it
                cls._jobs = queue.SimpleQueue()
                threading.Thread(
                    target=cls._run, args=(cls._jobs,), name="harmonixr-forker", daemon=True
                ).start()
                cls._pid = os.getpid()
            jobs = cls._jobs
        done, errors = threading.Event(), []
        jobs.put((proc, done, errors))
        done.wait()
        if errors:
            raise errors[0]

    @staticmethod
    def _run(jobs: queue.SimpleQueue[tuple[Any, threading.Event, list[BaseException]]]) -> None:
        while True:
            proc, done, errors = jobs.get()
            try:
                proc.start()
            except BaseException as exc:  # handed back to the caller
                errors.append(exc)
            finally:
                done.set()


def _status(key: str, pid: int | str = "self") -> int:
    """A ``/proc/PID/status`` figure in bytes (``VmRSS``, ``VmHWM``, ``VmSize``); 0 when it
    cannot be read (not Linux, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(key.encode() + b":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class _Slot:
    def __init__(
        self, ctx: mp.context.BaseContext, func: Callable[[Any], Any], memory: int | None = None
    ) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.conn = parent
        forked = ctx.get_start_method() == "fork"  # else the worker's parent is a server
        self.proc = ctx.Process(
            target=_worker_main,
            args=(child, func, parent, os.getpid() if forked else None, memory),
            daemon=True,
        )
        _Forker.start(self.proc)
        child.close()
        self.index: int | None = None
        self.deadline = float("inf")
        # anonymous memory (the heap: what a parser allocates) the worker has at the start; a
        # forked one counts its parent's pages, shared until written
        self.base = _status("RssAnon", self.proc.pid) if memory is not None else 0
        self.peak = 0

    def held(self) -> int:
        """The most anonymous memory seen held over what the worker started with (bytes)."""
        rss = _status("RssAnon", self.proc.pid)
        self.peak = max(self.peak, rss - self.base if rss else 0)
        return self.peak

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
    that crashed, hung, passed ``memory`` or was abandoned or cancelled mid-item is replaced
    before its next item.

    ``memory``: bytes of memory a worker may take over what it started with (Linux; watched
    every ``POLL`` s from the calling thread, with an address-space limit in the worker as a
    backstop); past it the worker is killed and its item fails with ``"memory"``."""

    def __init__(
        self,
        func: Callable[[Any], Any],
        *,
        workers: int = 2,
        timeout: float | None = None,
        context: mp.context.BaseContext | None = None,
        memory: int | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if memory is not None and memory < 1:
            raise ValueError(f"memory must be positive, got {memory}")
        self.func, self.timeout, self.memory = func, timeout, memory
        self.ctx = context or _default_context()
        self.slots = [self._new() for _ in range(workers)]

    def _new(self) -> _Slot:
        return _Slot(self.ctx, self.func, self.memory)

    def _grown(self, slot: _Slot) -> bool:
        """Whether a worker keeps over a quarter of its ceiling from past items (the
        allocator seldom gives memory back): a fresh one gets the next item."""
        return self.memory is not None and slot.held() > self.memory // 4

    def imap(
        self,
        items: Iterable[Any],
        *,
        timeout: float | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[Outcome]:
        """An :class:`Outcome` per item, in completion order (see :func:`run_robust`).
        ``timeout`` replaces the pool's for these items; once ``cancelled()`` is true (asked
        every ``POLL`` s) the items under way fail with ``"cancelled"`` and their workers are
        killed, and the items not begun are dropped."""
        slots = self.slots
        source = iter(enumerate(items))
        exhausted = False
        if timeout is None:
            timeout = self.timeout
        limit = timeout if timeout is not None else float("inf")
        watch = self.memory is not None or cancelled is not None
        try:
            while True:
                for i, slot in enumerate(slots):
                    if slot.index is None and not exhausted:
                        nxt = next(source, None)
                        if nxt is None:
                            exhausted = True
                            break
                        if not slot.proc.is_alive() or self._grown(slot):
                            slot.kill()  # dead, or holding memory past items took
                            slot = slots[i] = self._new()
                        slot.index = nxt[0]
                        slot.deadline = time.monotonic() + limit
                        slot.conn.send(nxt)
                busy = [s for s in slots if s.index is not None]
                if not busy:
                    return
                wait_for = min(s.deadline for s in busy) - time.monotonic()
                if watch:
                    wait_for = min(wait_for, POLL)
                handles: list[Any] = [s.conn for s in busy] + [s.proc.sentinel for s in busy]
                ready = wait(
                    handles, timeout=None if wait_for == float("inf") else max(0, wait_for)
                )
                stop = cancelled is not None and cancelled()
                if stop:
                    exhausted = True
                now = time.monotonic()
                for i, slot in enumerate(slots):
                    if slot.index is not None:
                        outcome = self._look(i, slot, ready, now, limit, stop)
                        if outcome is not None:
                            yield outcome
        finally:
            for slot in slots:  # abandoned mid-item: its answer would confuse the next batch
                if slot.index is not None:
                    slot.kill()
                    slot.index = None

    def _look(
        self, i: int, slot: _Slot, ready: list[Any], now: float, limit: float, stop: bool
    ) -> Outcome | None:
        """The outcome of a busy slot's item if it has one now (replacing a lost worker)."""
        index = slot.index
        assert index is not None
        peak = slot.held() if self.memory is not None else 0

        def lost(error: str, failure: str) -> Outcome:
            slot.kill()
            self.slots[i] = self._new()
            return Outcome(index, False, None, error, failure, peak)

        if slot.conn in ready:
            try:
                _, ok, value, error = slot.conn.recv()
            except (EOFError, OSError):
                return lost(_death_message(slot), "crashed")
            slot.index = None
            if not ok and error == MEMORY_ERROR:
                return lost("ran out of memory", "memory")
            return Outcome(index, ok, value, error, "" if ok else "error", peak)
        if slot.proc.sentinel in ready:
            return lost(_death_message(slot), "crashed")
        if self.memory is not None and peak > self.memory:
            return lost(f"took more than {self.memory / 2**20:.0f} MB", "memory")
        if stop:
            return lost("cancelled", "cancelled")
        if now >= slot.deadline:
            return lost(f"timed out after {limit:g} s", "timeout")
        return None

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
