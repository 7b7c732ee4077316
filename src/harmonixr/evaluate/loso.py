"""Leave one source out: the closest this corpus comes to unfamiliar music.

For each source S (ASAP's performances, DCML, each NIFC collection, Craig Sapp's editions,
Mutopia…: a piece's source is its ``Side.source`` before any ``/converter``):

- **test**: S's pieces whose composer the training side also holds (at least ``min_works``
  training units); S's other pieces are counted, not measured;
- **set aside**: pieces of other sources in a unit S touches (another edition of one of S's
  works, its performance): no work, edition or recording sits on two sides;
- **train / validation**: every other unit, validation drawn by a hash of the unit, the source
  and the seed (about ``val_fraction`` of them). Every choice (thresholds, a probe's C, a
  baseline's transform or C) is made there; S is only measured.

S is scored by the protocols of ``protocols.py`` on that fold: pairs of one held-out piece and
one training piece (``verify_against_train``: a source such as NIFC's Chopin collection holds
one composer, so its own pairs have no negatives), pairs within S where both classes exist
(``verify``), and attribution against the training side's composers (centroids, and a probe).
Each figure has an interval over units; the tuned baselines (``baselines.baseline_folds``) are
measured the same way, beside the model.

:func:`leave_one_source_out` runs the protocol on fixed per-piece features (a statistics-only or
probe back-end needs no training job); ``experiments.loso`` trains a model per held-out source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harmonixr.evaluate.baselines import LR, baseline_folds
from harmonixr.evaluate.protocols import Fold, Settings, evaluate_folds
from harmonixr.evaluate.records import WEIGHTINGS, Side, formatted, value
from harmonixr.evaluate.tables import INTERVALS, MODEL

LOSO_PROTOCOLS = ("verify_against_train", "verify", "attribution", "attribution_probe")
BASELINE_PROTOCOLS = ("verify_against_train", "verify", "attribution")
MIN_TEST = 2  # a source is held out when it leaves at least this many test pieces
# a back-end: a fold of features in, the fold in its own space and what it chose out
Backend = Callable[[Fold], tuple[Fold, dict[str, Any]]]


def source_of(origin: str) -> str:
    """The source of a piece's origin: a manifest's source without its converter
    (``dcml/mscore`` → ``dcml``), else the corpus reader (``asap``)."""
    return str(origin).split("/")[0] or "?"


def _hash(seed: int, source: str, unit: str) -> float:
    h = hashlib.sha256(f"{seed}\x00loso-val\x00{source}\x00{unit}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


@dataclass(frozen=True)
class Holdout:
    """One source held out: row indices of each side into the corpus, the other sources'
    pieces set aside (they share a unit with the source), and the source's pieces left
    unmeasured (their composer has too few training units)."""

    source: str
    sides: dict[str, np.ndarray]
    set_aside: np.ndarray
    unmeasured: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {
            **{k: int(v.size) for k, v in self.sides.items()},
            "set_aside": int(self.set_aside.size),
            "unmeasured": int(self.unmeasured.size),
        }

    def fold(self, corpus: Side) -> Fold:
        return Fold(**{k: corpus.take(v) for k, v in self.sides.items()})


def holdout(
    corpus: Side, source: str, val_fraction: float = 0.1, seed: int = 0, min_works: int = 1
) -> Holdout:
    """The sides of holding ``source`` out of ``corpus`` (the module docstring's rules)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    src = np.array([source_of(o) for o in corpus.source], dtype=object)
    mine = src == source
    if not mine.any():
        raise ValueError(f"no piece of source {source!r}")
    touched = set(corpus.unit[mine].tolist())
    in_touched = np.array([u in touched for u in corpus.unit], bool)
    rest = np.flatnonzero(~in_touched)
    val = np.array([_hash(seed, source, u) < val_fraction for u in corpus.unit[rest]], bool)
    train = rest[~val]
    units: dict[str, set[str]] = {}
    for c, u in zip(corpus.composer[train], corpus.unit[train], strict=True):
        units.setdefault(c, set()).add(u)
    held = {c for c, us in units.items() if len(us) >= min_works}
    candidates = np.flatnonzero(mine)
    measured = np.array([c in held for c in corpus.composer[candidates]], bool)
    return Holdout(
        source,
        {"train": train, "val": rest[val], "test": candidates[measured]},
        np.flatnonzero(in_touched & ~mine),
        candidates[~measured],
    )


def sources(corpus: Side) -> list[str]:
    """The corpus's named sources, sorted."""
    return sorted({source_of(o) for o in corpus.source} - {"?"})


def holdouts(
    corpus: Side,
    which: Iterable[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    min_works: int = 1,
) -> list[Holdout]:
    """A holdout per source (``which``, default every named source), those leaving fewer than
    ``MIN_TEST`` test pieces left out when chosen by default."""
    chosen = list(which) if which is not None else sources(corpus)
    out = [holdout(corpus, s, val_fraction, seed, min_works) for s in chosen]
    return out if which is not None else [h for h in out if h.sides["test"].size >= MIN_TEST]


def loso_report(
    methods: Mapping[str, Mapping[str, Fold]],
    s: Settings,
    sizes: Mapping[str, dict[str, int]],
    choices: Mapping[str, Mapping[str, dict[str, Any]]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every method's figures per held-out source (``methods[name][source]``: its fold), and a
    summary: per source the AUC against the training side, within the source, and top-1, the
    best baseline by validation AUC beside the model, and the means over sources."""
    say = progress or (lambda _m: None)
    held: dict[str, Any] = {}
    for name, folds in methods.items():
        baseline = name.endswith(" histogram") or name == LR
        for source, fold in folds.items():
            say(f"{source}: {name}")
            protocols = BASELINE_PROTOCOLS if baseline else LOSO_PROTOCOLS
            figures, _ = evaluate_folds([fold], s, protocols)
            entry = held.setdefault(source, {"sizes": sizes[source], "methods": {}, "choices": {}})
            entry["methods"][name] = figures
            if choices and source in choices.get(name, {}):
                entry["choices"][name] = choices[name][source]
    return {
        "protocol": "leave one source out",
        "resamples": s.resamples,
        "min_works": s.min_works,
        "intervals": INTERVALS,
        "weightings": WEIGHTINGS,
        "choices_made_on": "each held-out source's validation side (other sources' units)",
        "holdouts": held,
        "summary": summary(held),
    }


def summary(held: Mapping[str, Any]) -> dict[str, Any]:
    """Per method and source the headline figures; the baseline with the best mean validation
    AUC over sources (chosen without looking at any held-out source); means over sources."""
    names = list(dict.fromkeys(m for h in held.values() for m in h["methods"]))
    out: dict[str, Any] = {"per_source": {}, "mean": {}}
    for name in names:
        rows = {}
        for source, h in held.items():
            m = h["methods"].get(name)
            if m is None:
                continue
            rows[source] = {
                "auc": m.get("verify_against_train", {}).get("auc"),
                "auc_within": m.get("verify", {}).get("auc"),
                "top1": m.get("attribution", {}).get("top1"),
                "top1_probe": m.get("attribution_probe", {}).get("top1"),
                "val_auc": (m.get("val_auc_per_fold") or [None])[0],
            }
        out["per_source"][name] = rows
        out["mean"][name] = {
            k: _mean(r.get(k) for r in rows.values())
            for k in ("auc", "auc_within", "top1", "top1_probe", "val_auc")
        }
    base = [n for n in names if n != MODEL and out["mean"][n]["val_auc"] is not None]
    if base:
        out["best_baseline"] = max(base, key=lambda n: out["mean"][n]["val_auc"])
    return out


def _mean(values: Iterable[Any]) -> float | None:
    got = [v for v in (value(x) for x in values) if v is not None]
    return float(np.mean(got)) if got else None


def leave_one_source_out(
    corpus: Side,
    *,
    which: Sequence[str] | None = None,
    backends: Mapping[str, Backend] | None = None,
    hists: Mapping[str, np.ndarray] | None = None,
    settings: Settings = Settings(),
    val_fraction: float = 0.1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The protocol on fixed per-piece features (``corpus.embeddings``): the features as they
    are (compared by cosine, method ``MODEL``), each back-end fitted on each holdout's training
    side (``backends``: name → ``fold -> (fold, choice)``, e.g. ``baselines.probability_space``)
    and, given each piece's raw histograms (``hists``: kind → rows), the tuned baselines."""
    plan = holdouts(corpus, which, val_fraction, settings.seed, settings.min_works)
    methods: dict[str, dict[str, Fold]] = {MODEL: {}}
    choices: dict[str, dict[str, dict[str, Any]]] = {}
    for h in plan:
        fold = h.fold(corpus)
        methods[MODEL][h.source] = fold
        for name, backend in (backends or {}).items():
            methods.setdefault(name, {})[h.source], chosen = backend(fold)
            choices.setdefault(name, {})[h.source] = chosen
        if hists is not None:
            per_side = {
                k: {kind: rows[v] for kind, rows in hists.items()} for k, v in h.sides.items()
            }
            found, chosen = baseline_folds(fold, per_side, settings.seed)
            for name, f in found.items():
                methods.setdefault(name, {})[h.source] = f
                choices.setdefault(name, {})[h.source] = chosen[name]
    sizes = {h.source: h.sizes() for h in plan}
    report = loso_report(methods, settings, sizes, choices, progress)
    report["val_fraction"] = val_fraction
    return report


def loso_markdown(report: Mapping[str, Any]) -> str:
    """Per held-out source: the model's figures beside the best baseline's (chosen by mean
    validation AUC) and every method's AUC against the training side."""
    sm = report["summary"]
    best = sm.get("best_baseline")
    lines = [
        "# Leave one source out",
        "",
        "Each source held out in turn: trained without it (and without every unit it touches), "
        "measured on its pieces by composers the training side holds. Choices made on "
        f"{report['choices_made_on']}. Intervals: {report['intervals']}, "
        f"{report['resamples']} resamples.",
        "",
        f"| source | pieces (test / set aside / unmeasured) | {MODEL} AUC vs training side | "
        f"{best or 'best baseline'} AUC | {MODEL} AUC within source | {MODEL} top-1 | "
        f"{MODEL} probe top-1 | {best or 'baseline'} top-1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    model = sm["per_source"].get(MODEL, {})
    other = sm["per_source"].get(best, {}) if best else {}
    for source, h in report["holdouts"].items():
        z = h["sizes"]
        m, b = model.get(source, {}), other.get(source, {})
        lines.append(
            f"| {source} | {z['test']} / {z['set_aside']} / {z['unmeasured']} | "
            f"{formatted(m.get('auc'))} | {formatted(b.get('auc'))} | "
            f"{formatted(m.get('auc_within'))} | {formatted(m.get('top1'))} | "
            f"{formatted(m.get('top1_probe'))} | {formatted(b.get('top1'))} |"
        )
    mean = sm["mean"]
    lines.append(
        f"| **mean over sources** | | {formatted(mean.get(MODEL, {}).get('auc'))} | "
        f"{formatted(mean.get(best, {}).get('auc')) if best else '–'} | "
        f"{formatted(mean.get(MODEL, {}).get('auc_within'))} | "
        f"{formatted(mean.get(MODEL, {}).get('top1'))} | "
        f"{formatted(mean.get(MODEL, {}).get('top1_probe'))} | "
        f"{formatted(mean.get(best, {}).get('top1')) if best else '–'} |"
    )
    lines += ["", "## Every method, AUC against the training side", ""]
    srcs = list(report["holdouts"])
    lines.append("| method | " + " | ".join(srcs) + " | mean | validation AUC (mean) |")
    lines.append("|---" * (len(srcs) + 3) + "|")
    for name, rows in sm["per_source"].items():
        cells = [formatted(rows.get(s, {}).get("auc")) for s in srcs]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {formatted(mean[name]['auc'])} | "
            f"{formatted(mean[name]['val_auc'])} |"
        )
    return "\n".join(lines) + "\n"
