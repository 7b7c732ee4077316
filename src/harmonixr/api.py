"""``Harmonixr``: a model and its index, asked questions in one line each.

```python
hx = Harmonixr.load()                     # the shipped model and its reference index
hx = Harmonixr.load("runs/asap")          # or any run with an index (harmonixr index build)
hx.embed("a.mid")                         # (D,) float32, L2-normalised, whole piece
hx.embed(["a.mid", "b.mid"])              # (N, D); also a uint8 (T, 12, 6) array or a Score
hx.attribute("a.mid", k=5)                # [Attribution(composer, probability, score), ...]
hx.similar("a.mid", k=10)                 # [Match(composer, title, path, similarity), ...]
hx.verify("a.mid", "b.mid")               # Verdict(similarity, same_composer, probability)
hx.timeline("a.mid")                      # [Passage(start_s, end_s, {composer: p}), ...]
hx.identify("a.mid")                      # Identification: a known work, or none
```

Files are parsed in child processes (a file that crashes the parser raises
:class:`~harmonixr.midi.load.MidiError` with reason ``crashed``); bad files raise the same
reasons as ``preprocess``. Probabilities come from ``evaluate/calibrate.py``.

One module, over 400 lines: the front door's six questions share one input path (paths,
tensors, scores → tensors → embeddings) and one index; its records live in ``results.py``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, Union, overload

import numpy as np
import symusic
import torch

from harmonixr._files import sha256_file
from harmonixr.midi.files import load_files, parser_pool
from harmonixr.midi.load import UNREADABLE, MidiError, Tensorized, tensor_input
from harmonixr.model.embed import embed_windows, piece_windows, pool_windows
from harmonixr.results import Attribution, Embedded, Identification, Match, Passage, Verdict
from harmonixr.search.index import INDEX_DIR, AddResult, Index, add_files, check_index
from harmonixr.search.works import sketch
from harmonixr.train.rundir import Run, pretrained_dir

if TYPE_CHECKING:
    from harmonixr._pool import RobustPool
    from harmonixr.model.encoder import SiaViT

__all__ = ["Attribution", "Embedded", "Harmonixr", "Input", "Match", "Passage", "Verdict"]

# a path (MIDI or score), a uint8 (T, 12, 6) tensor (numpy or torch), or a symusic Score
# (a Union: symusic's Score is a factory that isinstance accepts, not a class ``|`` combines)
Input: TypeAlias = Union[str, os.PathLike[str], np.ndarray, torch.Tensor, symusic.Score]  # noqa: UP007
# progress(stage, done, total): stage "parse" counts files read, "embed" pieces embedded
Progress = Callable[[str, int, int], None]


def _is_path(x: object) -> bool:
    return isinstance(x, str | os.PathLike)


MIN_WINDOW_S, MAX_WINDOW_S, MAX_OVERLAP = 5.0, 120.0, 4
MAX_K = 100  # composers or pieces one question lists, at most (the service's bound)


class Harmonixr:
    """A run's encoder with its index (centroids, calibration, searchable corpus)."""

    def __init__(
        self, run: Run, encoder: SiaViT, index: Index | None = None, shipped: bool = False
    ) -> None:
        self.run, self.encoder, self.index, self.shipped = run, encoder, index, shipped
        self._parsers: RobustPool | None = None

    def parsers(self) -> RobustPool:
        """The child processes that parse this object's files, started on first use and
        kept (a process start per call would cost more than a short piece's forward)."""
        if self._parsers is None:
            self._parsers = parser_pool()
        return self._parsers

    def close(self) -> None:
        """Stop the parser processes (they also end with this process)."""
        if self._parsers is not None:
            self._parsers.close()
            self._parsers = None

    def __enter__(self) -> Harmonixr:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def load(
        cls,
        run: str | os.PathLike[str] | None = None,
        *,
        device: str = "cpu",
        threads: int | None = None,
    ) -> Harmonixr:
        """A run directory, or ``None`` for the model shipped in the package. The run's index
        (``RUN/index``) is loaded when present; without it only :meth:`embed` works.

        ``threads`` sets torch's CPU threads for this process (``torch.set_num_threads``);
        ``None`` (the default) leaves torch's own setting. Pass ``threads=1`` where other work
        shares the cores, as ``harmonixr serve`` does (``bench/threads.py`` measures why)."""
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be at least 1 (or None), got {threads}")
            torch.set_num_threads(threads)
        root = pretrained_dir() if run is None else Path(run)
        opened = Run.open(root)
        encoder = opened.encoder(device=device)
        index = None
        if (root / INDEX_DIR / "index.json").is_file():
            index = Index.load(root / INDEX_DIR)
            check_index(index, opened)
        return cls(opened, encoder, index, shipped=run is None)

    @property
    def composers(self) -> list[str]:
        """The composers this model can name (enough training works; see ``barely_known``)."""
        return list(self._index().calibration.composers)

    @property
    def barely_known(self) -> list[str]:
        """Composers with a centroid but too few training works to be named."""
        return self._index().barely_known

    def _index(self) -> Index:
        if self.index is None:
            raise ValueError(
                f"{self.run.root}: no index, so no composers or corpus to compare with; "
                f"build one: harmonixr index build {self.run.root} --data CACHE"
            )
        return self.index

    # ------------------------------------------------------------ inputs

    def _tensors(
        self,
        xs: Sequence[Any],
        workers: int | None = None,
        progress: Progress | None = None,
        skip_errors: bool = False,
    ) -> tuple[list[np.ndarray | None], list[MidiError]]:
        """Tensors of the inputs in order, files parsed together in child processes (``workers``
        fresh ones, else this object's :meth:`parsers`). A file that cannot be used raises its
        :class:`MidiError` (the first in input order), or with ``skip_errors`` leaves ``None``
        and is listed among the errors."""
        out: list[np.ndarray | None] = [None] * len(xs)
        errors: dict[int, MidiError] = {}
        where = [i for i, x in enumerate(xs) if _is_path(x)]
        loaded: list[Tensorized | MidiError] = []
        if where:
            pool = None if workers else self.parsers()
            parsed = (lambda i, n, _name: progress("parse", i, n)) if progress else None
            paths = [xs[i] for i in where]
            loaded = load_files(paths, self.run.tensor, workers=workers, pool=pool, progress=parsed)
        for i, got in zip(where, loaded, strict=True):
            if isinstance(got, MidiError):
                if not skip_errors:
                    raise got
                errors[i] = got
            else:
                out[i] = got.tensor
        for i, x in enumerate(xs):
            if not _is_path(x):
                try:
                    out[i] = tensor_input(x, self.run.tensor)
                except (ValueError, TypeError) as exc:  # a MidiError, or the wrong kind of input
                    if not skip_errors:
                        raise
                    reason = exc.reason if isinstance(exc, MidiError) else UNREADABLE
                    detail = exc.detail if isinstance(exc, MidiError) else str(exc)
                    errors[i] = MidiError(f"<input {i}>", reason, detail)
        return out, [errors[i] for i in sorted(errors)]

    # ------------------------------------------------------------ questions

    @overload
    def embed(
        self,
        x: Input | Sequence[Input],
        *,
        batch_size: int = ...,
        progress: Progress | None = ...,
        skip_errors: Literal[False] = ...,
        workers: int | None = ...,
    ) -> np.ndarray: ...

    @overload
    def embed(
        self,
        x: Input | Sequence[Input],
        *,
        batch_size: int = ...,
        progress: Progress | None = ...,
        skip_errors: Literal[True],
        workers: int | None = ...,
    ) -> Embedded: ...

    def embed(
        self,
        x: Input | Sequence[Input],
        *,
        batch_size: int = 32,
        progress: Progress | None = None,
        skip_errors: bool = False,
        workers: int | None = None,
    ) -> np.ndarray | Embedded:
        """Whole-piece embeddings: ``(D,)`` for one input, ``(N, D)`` for a list; the one entry
        for many files. ``batch_size`` crops go through the model at a time; ``workers``
        starts that many parser processes for this call (default: this object's two, kept);
        ``progress(stage, done, total)`` reports files parsed (``"parse"``) and pieces
        embedded (``"embed"``).

        A file that cannot be used raises its :class:`MidiError`, unless ``skip_errors``: then
        the bad files are skipped and reported, and the answer is an :class:`Embedded` (the
        inputs embedded, their ``(n, D)`` vectors, the errors); if none could be used it raises
        (the file's own error when there was one)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        single = not isinstance(x, list | tuple)
        xs = [x] if single else list(x)
        tensors, errors = self._tensors(xs, workers, progress, skip_errors)
        keep = [i for i, t in enumerate(tensors) if t is not None]
        if skip_errors and errors and not keep:
            if len(errors) == 1:
                raise errors[0]
            reasons = ", ".join(sorted({e.reason for e in errors}))
            raise ValueError(f"none of the {len(errors)} files could be embedded ({reasons})")
        embedded = (lambda i, n: progress("embed", i, n)) if progress else None
        kept = [tensors[i] for i in keep]
        z = self.run.embed(kept, self.encoder, batch_size=batch_size, progress=embedded, chunk=16)
        if skip_errors:
            names = tuple(os.fspath(xs[i]) if _is_path(xs[i]) else f"<input {i}>" for i in keep)
            return Embedded(names, z, tuple(errors))
        return z[0] if single else z

    @property
    def open_set(self) -> bool:
        """Whether "someone else" is an answer: False when, measured held out (``index
        measure``), it missed the bar (``open_set_note`` says by how much); the answer is then
        the closest named composer, probabilities over the named ones."""
        return not self._index().calibration.open_set_withdrawn

    open_set_note = property(lambda self: self._index().calibration.open_set_note)
    # what the held-out measure says of answers no known work backs ("" before it)
    new_work_note = property(lambda self: self._index().new_work_note)

    def attribute(
        self, x: Input, k: int = 5, *, prior_unknown: float | None = None
    ) -> list[Attribution]:
        """The answer first, then the ``k`` most probable named composers and "someone else"
        (``known=False``) by probability, then up to three *barely known* composers whose
        centroid is closer than the answer's (never named: too few training works).

        Probabilities of all named composers and "someone else" sum to one, and the answer is
        the most probable of them: no listed row is ever more probable than the answer. They
        assume the calibration's default prior that the composer is none of the named ones
        (fitted on validation so that at most a tenth of the named composers' pieces are
        answered "someone else"; ``index info`` shows it) unless ``prior_unknown`` says
        otherwise (Bayes' rule on the odds).

        When the index knows works and ``x`` renders one (:meth:`identify`), the answer
        follows from it: that composer gets the identification's probability and the model's
        own table shares the rest (``from_work`` names the work)."""
        return self.attribute_known(x, k, prior_unknown=prior_unknown)[1]

    def attribute_known(
        self, x: Input, k: int = 5, *, prior_unknown: float | None = None
    ) -> tuple[Identification | None, list[Attribution]]:
        """:meth:`identify` and :meth:`attribute` of one input, read once; the identification
        is None when the index knows no works."""
        tensor, sha = self._question(x)
        work = self._identified(tensor, sha) if self._index().works is not None else None
        z = self.embed(tensor)
        return work, self.attribute_embedding(z, k, prior_unknown=prior_unknown, work=work)

    def identify(self, x: Input) -> Identification:
        """Whether ``x`` renders a composition of the index (the same file, another edition or
        performance), by melodic content (``search/works.py``; fitted on validation)."""
        return self._identified(*self._question(x))

    def _question(self, x: Input) -> tuple[np.ndarray, str]:
        (tensor,), _ = self._tensors([x])  # and the file's content hash (else "")
        return tensor, sha256_file(x) if _is_path(x) else ""

    def _identified(self, tensor: np.ndarray, sha: str) -> Identification:
        melodic = sketch(tensor, self.run.tensor.low_note, self.run.tensor.frame_ms)
        return self._index().identify(melodic, sha)

    def attribute_embedding(
        self, z: np.ndarray, k: int = 5, *, prior_unknown: float | None = None, work: Any = None
    ) -> list[Attribution]:
        """:meth:`attribute` for a ``(D,)`` embedding already computed (by :meth:`embed`), with
        the piece's :meth:`identify` as ``work`` when known (no work is identified from ``z``)."""
        z = np.asarray(z, np.float32).reshape(1, -1)
        return self._index().attributions(z, k, prior_unknown, work)

    def similar(self, x: Input, k: int = 10, *, per_work: int | None = None) -> list[Match]:
        """The ``k`` indexed pieces nearest to ``x`` (cosine similarity, best first); a piece
        already in the index finds itself first. ``per_work=1`` keeps the best rendition of
        each piece (same composer and title: its performances, its copies), so ten hits are
        ten pieces."""
        return self.similar_embedding(self.embed(x), k, per_work=per_work)

    def similar_embedding(
        self, z: np.ndarray, k: int = 10, *, per_work: int | None = None
    ) -> list[Match]:
        """:meth:`similar` for a ``(D,)`` embedding already computed (by :meth:`embed`)."""
        if per_work is not None and per_work < 1:
            raise ValueError(f"per_work must be at least 1, got {per_work}")
        (hits,) = self._index().search(np.asarray(z, np.float32).reshape(1, -1), k, per_work)
        p = self._index().calibration.same_probability([m.similarity for m in hits])
        return [replace(m, same_composer=float(q)) for m, q in zip(hits, p, strict=True)]

    def verify(self, a: Input, b: Input) -> Verdict:
        """Whether ``a`` and ``b`` share a composer, with the calibrated probability; the
        decision is ``probability ≥ 0.5`` (the validation-fitted similarity threshold)."""
        za, zb = self.embed([a, b])
        sim = float(np.dot(za, zb))
        p = float(self._index().calibration.same_probability(sim))
        return Verdict(sim, p >= 0.5, p)

    @property
    def crop_seconds(self) -> float:
        """The run's crop: what it was trained on, the window of its whole-piece embedding and
        the default window of :meth:`timeline` (30 s for the shipped model)."""
        return round(self.run.crop_frames * self.run.frame_seconds, 6)

    def timeline_windows(
        self, window: float | None = None, hop: float | None = None
    ) -> tuple[float, float]:
        """The window and hop :meth:`timeline` uses, in seconds: ``window`` defaults to the run's
        crop (:attr:`crop_seconds`), ``hop`` to a third of the crop in whole frames (10 s for
        the shipped model), kept within what the window allows (window/4 to window)."""
        window = self.crop_seconds if window is None else float(window)
        if hop is None:
            third = round(max(1, round(self.run.crop_frames / 3)) * self.run.frame_seconds, 6)
            return window, min(max(third, window / MAX_OVERLAP), window)
        return window, float(hop)

    def timeline(
        self, x: Input, window: float | None = None, hop: float | None = None
    ) -> list[Passage]:
        """Composer probabilities of windows of ``window`` seconds every ``hop`` seconds (the
        last window ends at the piece's end; defaults: :meth:`timeline_windows`). The
        calibration is the whole-piece one, so a short window's probabilities are indicative
        rather than calibrated."""
        tensor, crop, step = self._timeline_input(x, *self.timeline_windows(window, hop))
        windows = piece_windows([tensor], crop, step)
        return self._index().passages(
            self.run.frame_seconds, embed_windows(self.encoder, [tensor], windows, crop), windows
        )

    def timeline_and_embedding(
        self, x: Input, window: float | None = None, hop: float | None = None
    ) -> tuple[list[Passage], np.ndarray]:
        """:meth:`timeline` and :meth:`embed` of one input, the model run once on each window
        they share: when ``window`` is the run's crop (the default, whatever the crop), every
        timeline window is also one of the whole-piece embedding's (both lists end at the
        piece's end). Another window is embedded apart from the whole piece's."""
        tensor, crop, step = self._timeline_input(x, *self.timeline_windows(window, hop))
        windows = piece_windows([tensor], crop, step)
        if crop != self.run.crop_frames or self.encoder.has_stats:
            # a statistics model's whole piece is not the mean of its windows' embeddings
            z = embed_windows(self.encoder, [tensor], windows, crop)
            return self._index().passages(self.run.frame_seconds, z, windows), self.embed(tensor)
        whole = piece_windows([tensor], crop, self.run.hop_frames)
        by_start = {w.start: w for w in [*whole, *windows]}
        starts = sorted(by_start)
        z = embed_windows(self.encoder, [tensor], [by_start[s] for s in starts], crop)
        row = {s: i for i, s in enumerate(starts)}
        piece = pool_windows(z[[row[w.start] for w in whole]], whole, 1)[0]
        return self._index().passages(
            self.run.frame_seconds, z[[row[w.start] for w in windows]], windows
        ), piece

    def _timeline_input(self, x: Input, window: float, hop: float) -> tuple[np.ndarray, int, int]:
        """The input's tensor and the timeline's window and hop in frames, both checked."""
        if not (MIN_WINDOW_S <= window <= MAX_WINDOW_S):
            raise ValueError(
                f"window must be {MIN_WINDOW_S:g}–{MAX_WINDOW_S:g} s (what the model can judge), "
                f"got {window}"
            )
        if not (window / MAX_OVERLAP <= hop <= window):
            # bounds the work: at most MAX_OVERLAP× the piece's frames go through the model
            raise ValueError(
                f"hop must be between window/{MAX_OVERLAP} and window ({window / MAX_OVERLAP:g}–"
                f"{window:g} s), got {hop}"
            )
        self._index()
        (tensor,), _ = self._tensors([x])
        fs = self.run.frame_seconds
        return tensor, max(1, round(window / fs)), max(1, round(hop / fs))

    # ------------------------------------------------------------ the index

    def add(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        composer: str = "",
        workers: int | None = None,
    ) -> AddResult:
        """Add files to this run's index (no rebuild; content already there is skipped)."""
        index = self._index()
        if self.shipped:
            raise ValueError(
                "the shipped index is part of the installed package; build your own "
                "(harmonixr index build RUN) to add files"
            )
        pool = None if workers else self.parsers()
        return add_files(
            self.run, self.encoder, index, paths, composer=composer, workers=workers, pool=pool
        )

    def info(self) -> dict[str, Any]:
        return self._index().info()
