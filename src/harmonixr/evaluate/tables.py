"""The evaluation report's one layout, for a single run and a cross-validation alike: its
Markdown (:func:`report_markdown`) and the reading of reports written by earlier versions
(:func:`read_report`, :func:`upgrade_methods`), whose figures were flat keys with ``_lo`` /
``_hi`` siblings (a run's: ``verify_auc``, ``attr_top1``…) or nested sections with them (a
cross-validation's: ``verify.auc``).

A method's figures, by section: ``verify`` (and ``verify_performance``, ``verify_score``,
``verify_cross-kind``), ``pairs``, ``attribution``, ``attribution_probe``, ``retrieval``,
``control_performer``, ``control_score_midis``, ``source_probe``; and ``val_auc_per_fold``.
Every figure is an estimate in its JSON form (``records.Estimate``); counts are numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harmonixr.evaluate.records import flat_estimates, formatted, value
from harmonixr.evaluate.verification import PAIR_METRICS

MODEL = "SiaViT"
UNTRAINED = "SiaViT (untrained)"
INTERVALS = "95% percentile bootstrap over units (a pair weighs the draws of both its units)"

# ------------------------------------------------------------------ reports of earlier versions

# flat keys of a run's report before sections, by prefix (the longest first)
_FLAT_SECTIONS = (
    ("conf_score_", "control_score_midis"),
    ("conf_performer_", "control_performer"),
    ("verify_", "verify"),
    ("pairs_", "pairs"),
    ("seed_", "pairs"),
    ("attr_", "attribution"),
    ("probe_", "attribution_probe"),
    ("retr_", "retrieval"),
)
_FLAT_RENAMED = {  # old flat key → (section, key, as a one-fold list)
    "conf_same_performer_share": ("control_performer", "same_performer_share", False),
    "pairs_threshold": ("pairs", "thresholds", True),
    "seed_threshold": ("pairs", "thresholds", True),
    "attr_composers": ("attribution", "candidates_per_fold", True),
    "probe_C": ("attribution_probe", "C_per_fold", True),
}
_COUNTS = {"pairs", "same", "pieces", "work_queries", "candidates_per_fold", "C_per_fold"}
_NOT_FIGURES = _COUNTS | {"thresholds", "val_auc_per_fold"}


def _weighting(section: str, key: str) -> str:
    if key.endswith("_gpe"):
        return "unit pairs"
    if section.startswith(("verify", "control", "pairs")):
        return "pairs"
    return "queries" if section == "retrieval" else "pieces"


def _section(name: str, d: Mapping[str, Any], resamples: int) -> dict[str, Any]:
    """One old section with its figures as estimates (intervals from ``_lo``/``_hi``)."""
    if name == "source_probe":
        return dict(d)
    weightings = {k: _weighting(name, k) for k in d}
    out = flat_estimates(d, weightings, resamples)
    for k, v in out.items():
        if k in _NOT_FIGURES or k.startswith("n_") or isinstance(v, Mapping | list):
            continue
        out[k] = {"value": value(v), "lo": None, "hi": None, "weighting": weightings[k]}
        out[k]["resamples"] = 0
    return out


def _flat_method(m: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A run's method of an earlier version (flat keys) as sections of flat keys."""
    out: dict[str, Any] = {}
    for k, v in m.items():
        if k in _FLAT_RENAMED:
            section, key, listed = _FLAT_RENAMED[k]
            out.setdefault(section, {})[key] = [v] if listed else v
        elif k == "val_verify_auc":
            out["val_auc_per_fold"] = [v]
        else:
            prefix, section = next(((p, s) for p, s in _FLAT_SECTIONS if k.startswith(p)), ("", ""))
            if not section:
                out[k] = v
                continue
            key = k[len(prefix) :]
            if prefix in ("pairs_", "seed_") and key.startswith("pairs_"):
                key = "n_" + key[len("pairs_") :]  # seed_pairs_<set> → n_<set>
            if section == "pairs" and prefix == "seed_" and key in out.get("pairs", {}):
                continue  # a key under both names keeps today's
            out.setdefault(section, {})[key] = v
    return out


def upgrade_methods(
    methods: Mapping[str, Mapping[str, Any]], resamples: int = 0
) -> dict[str, dict[str, Any]]:
    """Methods' figures of any earlier report in today's layout (already current: unchanged)."""
    out = {}
    for name, m in methods.items():
        flat = any(
            not isinstance(v, Mapping | list) and k != "val_auc_per_fold" for k, v in m.items()
        )
        sections = _flat_method(m) if flat else dict(m)
        out[name] = {
            k: _section(k, v, resamples) if isinstance(v, Mapping) else v
            for k, v in sections.items()
        }
    return out


def read_report(path: str | Path) -> dict[str, Any]:
    """A ``report.json`` of a run or of a cross-validation, this version's or an earlier one's,
    in today's layout."""
    return upgrade_report(json.loads(Path(path).read_text()))


def upgrade_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """A report of any version in today's layout (see the module docstring)."""
    r = dict(report)
    resamples = int(r.get("resamples") or 0)
    methods = upgrade_methods(r.get("methods", {}), resamples)
    for name, probes in (r.pop("source_probe", None) or {}).items():
        methods.setdefault(name, {})["source_probe"] = probes
    r["methods"] = methods
    if isinstance(r.get("pieces"), Mapping):  # a run's, before fold_sizes
        sizes = {("test" if k == "held" else k): v for k, v in r.pop("pieces").items()}
        r["fold_sizes"] = [sizes]
        units = r.pop("groups", {}) or {}
        r["fold_units"] = [{("test" if k == "held" else k): v for k, v in units.items()}]
        r.setdefault("measured_on", r.get("held_side", "test"))
    if isinstance(r.get("choices"), Mapping):
        r["choices"] = {k: v if isinstance(v, list) else [v] for k, v in r["choices"].items()}
    return r


# ------------------------------------------------------------------ Markdown


def _fig(m: Mapping[str, Any], section: str, key: str) -> str:
    return formatted((m.get(section) or {}).get(key))


def _val_auc(m: Mapping[str, Any]) -> str:
    vals = [v for v in m.get("val_auc_per_fold") or [] if v is not None]
    return formatted(sum(vals) / len(vals) if vals else None)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
        *["| " + " | ".join(r) + " |" for r in rows],
    ]


def _header(r: Mapping[str, Any]) -> list[str]:
    sizes = r.get("fold_sizes") or [{}]
    on = r.get("measured_on", "test")
    if "plan" in r:
        p = r["plan"]
        every = len(r["folds_reported"]) == p["folds"]
        return [
            f"# Cross-validation: {p['folds']} folds, {p['mode']} split, seed {p['seed']}",
            "",
            f"{'Validation' if on == 'val' else 'Test'} sides of fold(s) {r['folds_reported']}"
            + ("" if every else " only (not the whole corpus)")
            + ".",
            "",
            f"{r['pieces']} pieces, {r['units']} leak-free units, {r['composers']} composers. "
            "Pooled out-of-fold figures; every choice made on the fold's validation side"
            + (
                " (baselines chosen and measured on it: optimistic for them)."
                if on == "val"
                else "."
            )
            + f" Intervals: {r.get('intervals', INTERVALS)}, {r['resamples']} resamples.",
        ]
    s = sizes[0]
    model = (r["methods"].get(MODEL) or {}).get("verify", {})
    return [
        f"# Evaluation of `{r['run']}` on its {r['held_side']} side ({r['split']})",
        "",
        f"Pieces: train {s.get('train')}, val {s.get('val')}, held-out {s.get('test')} in "
        f"{(r.get('fold_units') or [{}])[0].get('test')} units"
        + (f"; score MIDIs {s['scores']}" if "scores" in s else "")
        + f". Whole pieces (crops of {r['crop_frames']} frames, half overlapping, averaged). "
        f"Held-out pairs from different units: {model.get('pairs', 0)} ({model.get('same', 0)} "
        f"same composer). Intervals: {r.get('intervals', INTERVALS)}, {r['resamples']} "
        "resamples. "
        + (
            "Thresholds, probe C and baseline settings come from the validation side."
            if on != "val"
            else "**Thresholds, probe C and baseline settings were chosen on this same "
            "validation side: these figures are optimistic; use the test side for claims.**"
        ),
    ]


def _columns(
    methods: Mapping[str, Mapping[str, Any]], title: str, columns: list[tuple[str, str, str]]
) -> list[str]:
    """A table of every method holding ``columns``' first section: one row per method, one
    column per (header, section, key)."""
    held = {name: m for name, m in methods.items() if columns[0][1] in m}
    if not held:
        return []
    rows = [
        [f"**{name}**" if name == MODEL else name]
        + [_fig(m, section, key) for _, section, key in columns]
        for name, m in held.items()
    ]
    return ["", f"## {title}", "", *_table(["method", *(h for h, _, _ in columns)], rows)]


def _verify_columns() -> list[tuple[str, str, str]]:
    cols = [(f"all: {m.label}", "verify", m.name) for m in PAIR_METRICS.values()]
    cols.append(("all: AUC (unit pairs equal)", "verify", "auc_gpe"))
    cols += [(f"{what}: AUC", f"verify_{s}", "auc") for what, s in _KINDS]
    return cols


_KINDS = (("performances", "performance"), ("scores", "score"), ("cross-kind", "cross-kind"))
_ATTRIBUTION = [
    ("pieces", "pieces"),
    ("top-1", "top1"),
    ("top-3", "top3"),
    ("top-1 on performances", "top1_performance"),
    ("balanced acc", "balanced_acc"),
    ("macro-F1", "macro_f1"),
]


def report_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown tables: verification (every registered metric), the pair-set
    protocol, attribution, retrieval, controls, source probes and the choices."""
    r = upgrade_report(report)
    methods = r["methods"]
    lines = _header(r)
    lines += _columns(
        methods,
        "Verification (same composer?), pairs of test pieces from different units",
        _verify_columns(),
    )
    lines += [
        "",
        "Validation AUC (mean over folds): "
        + ", ".join(f"{name} {_val_auc(m)}" for name, m in methods.items()),
    ]
    lines += _columns(
        methods,
        "Verification against the training side (a test piece and a training piece)",
        [
            (h, "verify_against_train", k)
            for h, k in (("AUC", "auc"), ("AUC (unit pairs)", "auc_gpe"))
        ],
    )
    lines += _columns(
        methods,
        "The original SiaViT project's pair sets (threshold from validation)",
        [(f"acc {s}", "pairs", f"acc_{s}") for s in ("mixed", "same", "different")],
    )
    for section, title in (
        ("attribution", "Attribution to the named training composers (their centroids)"),
        ("attribution_probe", "Attribution by a probe on the embeddings (C on validation)"),
    ):
        lines += _columns(methods, title, [(h, section, k) for h, k in _ATTRIBUTION])
    lines += _columns(
        methods,
        "Retrieval",
        [
            ("same-composer mAP", "retrieval", "map"),
            ("precision@10", "retrieval", "p10"),
            ("same-work recall@1", "retrieval", "work_r1"),
        ],
    )
    lines += _columns(
        methods,
        "Control: the performer (0.5: the embedding does not hear who plays)",
        [
            ("performer AUC", "control_performer", "auc"),
            ("same-composer pairs by one performer", "control_performer", "same_performer_share"),
        ],
    )
    lines += _columns(
        methods, "Control: score MIDIs of the test works", [("AUC", "control_score_midis", "auc")]
    )
    lines += _source_probes(methods)
    lines += ["", "Choices made on validation: " + json.dumps(r.get("choices") or {}), ""]
    if "plan" in r:
        lines += [f"Fold sizes: {r.get('fold_sizes')}", f"Timing (s): {r.get('timing')}", ""]
    return "\n".join(lines)


def _source_probes(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
    probes = [
        [name, target, f"{s['balanced_accuracy']:.3f}", f"{s['chance']:.3f}", str(s["pieces"])]
        for name, m in methods.items()
        for target, s in (m.get("source_probe") or {}).items()
    ]
    if not probes:
        return []
    head = ["method", "target", "balanced accuracy", "chance", "pieces"]
    return ["", "## Source probes (what the embedding should not tell)", "", *_table(head, probes)]
