"""What the web service does with an upload, off the event loop: check its header, parse and
tensorize it in a child process with a time limit, embed it once and ask the model.

No FastAPI here: :class:`Service` takes bytes and returns plain dictionaries (the shapes of the
API's records), so it can be tested and timed without a server. Uploads are never written to
disk: the bytes go to the parser process through a pipe, and an ``.mxl`` is unzipped there in
memory.

What a parse may cost (``uploads.Limits``): MIDI files 30 s; scores (MusicXML, ``.mxl``,
kern, MEI), whose conversion costs far more per byte, their own 3 MB, 60,000 XML elements,
40,000 notes once repeats are expanded and 40 s; every parser process 384 MB of memory over
what it started with. Refusals say the reason in the project's words; what a library said is logged
(logger ``harmonixr.serve``), never sent.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from harmonixr.midi.load import (
    CANCELLED,
    EMPTY,
    NOT_MIDI,
    TOO_LARGE,
    MidiError,
    Tensorized,
    failure_reason,
    parse_bytes_job,
)
from harmonixr.midi.scores import is_score
from harmonixr.midi.tensorize import condense
from harmonixr.results import Identification
from harmonixr.serve.uploads import MB, Limits, UploadError, error_for, has_midi_header

if TYPE_CHECKING:
    from harmonixr._pool import RobustPool
    from harmonixr.api import Harmonixr
    from harmonixr.viz.tsne import CorpusMap

T = TypeVar("T")
MAX_QUIET_S = 10.0  # an upload's stretches without a new note are cut to this (see condense)


# ------------------------------------------------------------------ the corpus map


def shown_path(path: Path) -> str:
    """A folder as the page may show it: inside the installed package by its package path,
    under the working folder relative to it, else its last two parts (no install paths)."""
    path = Path(path).resolve()
    package = Path(__file__).resolve().parents[1]
    for base, prefix in ((package, "harmonixr/"), (Path.cwd().resolve(), "")):
        try:
            return prefix + path.relative_to(base).as_posix()
        except ValueError:
            pass
    return "…/" + "/".join(path.parts[-2:])


def find_map(root: Path, map_dir: str | Path | None = None) -> tuple[CorpusMap | None, str]:
    """The saved corpus map of the model at ``root`` (``map_dir``, else ``ROOT/viz/map`` as
    ``viz tsne`` saves it, else ``ROOT/map``), checked against the model's weights; or None
    and why. Never fits one: that takes minutes."""
    from harmonixr.train.rundir import Run
    from harmonixr.viz.maps import StaleMap, check_map
    from harmonixr.viz.tsne import MAP_JSON, CorpusMap

    places = [Path(map_dir)] if map_dir else [root / "viz" / "map", root / "map"]
    found = next((p for p in places if (p / MAP_JSON).is_file()), None)
    if found is None:
        where = " or ".join(shown_path(p) for p in places)
        return None, (
            f"no saved corpus map for this model (looked in {where}); make one with "
            f"'harmonixr viz tsne {shown_path(root)} --data CACHE'"
        )
    try:
        cmap = CorpusMap.load(found)
        check_map(cmap, Run.open(root), found)
    except StaleMap:
        return None, (
            f"{shown_path(found)}: the saved map was made with other weights than the model's; "
            f"remake it with 'harmonixr viz tsne {shown_path(root)} --data CACHE'"
        )
    except (ValueError, OSError, KeyError) as exc:
        # the exception's text may hold absolute paths: only its kind is shown
        return None, f"{shown_path(found)}: the saved map cannot be used ({type(exc).__name__})"
    return cmap, f"{len(cmap)} pieces, saved in {shown_path(found)}"


# ------------------------------------------------------------------ the service


@contextlib.contextmanager
def _window_bounds() -> Iterator[None]:
    """The API's bounds on window and hop, said to the client as they are."""
    try:
        yield
    except ValueError as exc:
        raise UploadError(422, "bad_window", str(exc)) from None


class Service:
    """The model, its parser processes (one per worker, each used by one request at a time)
    and the saved map. Every method blocks: call it from a worker thread."""

    def __init__(
        self,
        hx: Harmonixr,
        *,
        workers: int = 2,
        limits: Limits = Limits(),
        map_dir: str | Path | None = None,
        loader: Callable[[Any], Any] = parse_bytes_job,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if not hx.composers:  # raises, naming the run, when the model has no index at all
            raise ValueError(f"{hx.run.root}: its index names no composers to attribute to")
        self.hx, self.workers, self.limits, self.loader = hx, workers, limits, loader
        self._pools: queue.Queue[RobustPool | None] = queue.Queue()
        for _ in range(workers):
            self._pools.put(None)  # started on first use
        self._made: list[RobustPool] = []
        self._lock = threading.Lock()
        self.abandoned = 0  # requests dropped because their client hung up
        self.largest_parse = 0  # the most memory a parser process took over its start (bytes)
        self.map, self.map_note = find_map(hx.run.root, map_dir)
        if self.map is None:
            logging.getLogger("harmonixr.serve").info("no corpus map: %s", self.map_note)
        self._map_json: dict[str, Any] | None = None
        self._colours: dict[str, str] | None = None

    @property
    def index(self) -> Any:
        return self.hx.index

    # ------------------------------------------------------------ processes

    @contextlib.contextmanager
    def slot(self) -> Iterator[RobustPool]:
        """One worker's parser process, waited for when all are busy."""
        from harmonixr.midi.load import parser_pool

        pool = self._pools.get()
        try:
            if pool is None:
                lim = self.limits
                pool = parser_pool(
                    self.loader, workers=1, timeout=lim.parse_timeout, memory=lim.memory
                )
                with self._lock:
                    self._made.append(pool)
            yield pool
        finally:
            self._pools.put(pool)

    def close(self) -> None:
        with self._lock:
            made, self._made = self._made, []
        for pool in made:
            pool.close()
        self.hx.close()

    # ------------------------------------------------------------ inputs

    def tensor(
        self,
        pool: RobustPool,
        data: bytes,
        name: str,
        gone: threading.Event | None = None,
    ) -> np.ndarray:
        """The uploaded file's tensor, parsed in ``pool``'s child process (killed, and
        replaced, once ``gone`` is set); raises :class:`UploadError` with the status and
        reason for a bad file."""
        lim = self.limits
        score = is_score(name)
        if not score and not has_midi_header(data):
            reason = EMPTY if not data else NOT_MIDI
            raise error_for(MidiError(name, reason), name, lim)
        if score and len(data) > lim.score_bytes:
            raise error_for(MidiError(name, TOO_LARGE), name, lim)
        job = (data, name, self.hx.run.tensor, lim.max_seconds, lim.max_bytes, lim.scores())
        (outcome,) = pool.imap(
            [job],
            timeout=lim.score_timeout if score else lim.parse_timeout,
            cancelled=None if gone is None else gone.is_set,
        )
        with self._lock:
            self.largest_parse = max(self.largest_parse, outcome.peak)
        if outcome.ok and isinstance(outcome.value, Tensorized):
            # a held note or a silence costs the model no more than MAX_QUIET_S of music
            quiet = max(1, round(MAX_QUIET_S / self.hx.run.frame_seconds))
            return condense(outcome.value.tensor, quiet)
        reason, detail = failure_reason(outcome)
        if reason == CANCELLED:
            raise self._gone()
        if outcome.failure == "memory":
            detail = f"reading it took more than the {lim.memory / MB:.0f} MB a file may take"
        raise error_for(MidiError(name, reason, detail), name, lim)

    def _gone(self) -> UploadError:
        with self._lock:
            self.abandoned += 1
        return UploadError(499, "client_gone", "The client closed the connection")

    def ask(
        self,
        files: list[tuple[bytes, str]],
        question: Callable[..., T],
        gone: threading.Event | None = None,
    ) -> T:
        """``question(*tensors)`` of the uploaded files, the whole of it (parse, forward,
        search) while holding one worker, so at most ``workers`` requests work at once. Once
        ``gone`` is set (the client hung up) the work is dropped: waiting for a worker, a
        parse under way (its process is killed and replaced), the parses and the model not
        begun."""

        def check() -> None:
            if gone is not None and gone.is_set():
                raise self._gone()

        check()
        with self.slot() as pool:
            check()
            tensors = []
            for data, name in files:
                tensors.append(self.tensor(pool, data, name, gone))
                check()
            return question(*tensors)

    # ------------------------------------------------------------ questions

    def model_name(self) -> str:
        root = self.hx.run.root
        return "the shipped model" if self.hx.shipped else root.name or str(root)

    def colours(self) -> dict[str, str]:
        """A colour per composer, as the map pictures give them (the 16 with the most pieces;
        the rest are drawn grey); computed once."""
        from harmonixr.viz._style import composer_colours

        if self._colours is None:
            index = self.index
            m = self.map
            pieces = m.composers if m is not None else [it.composer for it in index.items]
            self._colours = composer_colours(pieces)
        return self._colours

    def health(self) -> dict[str, Any]:
        """What the page needs to know (no software versions: nothing for an attacker)."""
        index = self.index
        return {
            "status": "ok",
            "model": self.model_name(),
            "shipped": self.hx.shipped,
            "index_size": len(index),
            "composers": list(index.calibration.composers),  # the named ones
            "colours": self.colours(),
            "map": self.map is not None,
            "map_note": self.map_note,
            "max_upload_bytes": self.limits.max_bytes,
            "max_score_bytes": self.limits.score_bytes,
            "workers": self.workers,
            "crop_s": self.hx.crop_seconds,
            "open_set": self.hx.open_set,
            "open_set_note": self.hx.open_set_note,
            "new_work_note": self.hx.new_work_note,
            "known_works": index.works is not None,
        }

    def embed(self, tensor: np.ndarray) -> dict[str, Any]:
        z = self.hx.embed(tensor)
        return {"dim": int(z.shape[0]), "embedding": z.tolist()}

    def attribute(self, tensor: np.ndarray, k: int) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self.hx.attribute(tensor, k)]

    def identify(self, tensor: np.ndarray) -> dict[str, Any]:
        if self.index.works is None:
            raise UploadError(
                409, "no_known_works", "This model's index knows no works to recognise."
            )
        return self.hx.identify(tensor).to_dict()

    def _work(self, tensor: np.ndarray) -> Identification | None:
        return self.hx.identify(tensor) if self.hx.index.works is not None else None

    def similar(self, tensor: np.ndarray, k: int, per_work: int | None) -> list[dict[str, Any]]:
        return [m.to_dict() for m in self.hx.similar(tensor, k, per_work=per_work)]

    def verify(self, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        return self.hx.verify(a, b).to_dict()

    def timeline(
        self, tensor: np.ndarray, window: float | None, hop: float | None
    ) -> list[dict[str, Any]]:
        window, hop = self.hx.timeline_windows(window, hop)
        self._check_windows(tensor, window, hop)
        with _window_bounds():
            return [p.to_dict() for p in self.hx.timeline(tensor, window=window, hop=hop)]

    def _check_windows(self, tensor: np.ndarray, window: float, hop: float) -> None:
        seconds = tensor.shape[0] * self.hx.run.frame_seconds
        n = max(0.0, seconds - window) / hop + 1
        if n > self.limits.max_windows:
            raise UploadError(
                422,
                "too_many_windows",
                f"{seconds:.0f} s in windows every {hop:g} s would make {n:.0f} windows, more "
                f"than the {self.limits.max_windows} allowed; choose a longer hop",
            )

    def roll(self, tensor: np.ndarray) -> dict[str, Any]:
        cfg = self.hx.run.tensor
        from harmonixr.viz.tensor import roll_summary

        return roll_summary(tensor, self.hx.run.frame_seconds, cfg.low_note)

    def place(self, z: np.ndarray) -> dict[str, Any] | None:
        """Where an embedding lands in the saved map (corpus points never move)."""
        if self.map is None:
            return None
        with self._lock:  # openTSNE's transform is not documented as thread-safe
            xyz = self.map.place(z[None])[0]
        return {"x": float(xyz[0]), "y": float(xyz[1]), "z": float(xyz[2])}

    def corpus_map(self) -> dict[str, Any]:
        """The corpus map's points, columnwise, for the page's plot (computed once)."""
        if self.map is None:
            return {"available": False, "note": self.map_note}
        if self._map_json is None:
            m = self.map
            xyz = np.round(m.coords, 3)
            self._map_json = {
                "available": True,
                "note": self.map_note,
                "x": xyz[:, 0].tolist(),
                "y": xyz[:, 1].tolist(),
                "z": xyz[:, 2].tolist(),
                "composers": list(m.composers),
                "titles": list(m.titles),
                "colours": self.colours(),
            }
        return self._map_json

    def analyze(
        self, tensor: np.ndarray, name: str, k: int, n: int, window: float | None, hop: float | None
    ) -> dict[str, Any]:
        """Everything the page shows for one file: one parse, one whole-piece embedding. The
        timeline's windows default to the run's crop, side by side (``hop``: the window)."""
        window, _ = self.hx.timeline_windows(window)
        hop = window if hop is None else hop
        self._check_windows(tensor, window, hop)
        with _window_bounds():  # windows of the run's crop are its crops: embedded once for both
            passages, z = self.hx.timeline_and_embedding(tensor, window, hop)
        timeline = [p.to_dict() for p in passages]
        work = self._work(tensor)
        return {
            "file": name,
            "seconds": round(tensor.shape[0] * self.hx.run.frame_seconds, 3),
            "identified": None if work is None else work.to_dict(),
            "attribution": [a.to_dict() for a in self.hx.attribute_embedding(z, k, work=work)],
            "similar": [m.to_dict() for m in self.hx.similar_embedding(z, n, per_work=1)],
            "similar_all": [m.to_dict() for m in self.hx.similar_embedding(z, n)],
            "timeline": {
                "window_s": window,
                "hop_s": hop,
                "passages": timeline,
                "calibrated": False,  # whole-piece calibration applied to windows
            },
            "roll": self.roll(tensor),
            "position": self.place(z),
        }
