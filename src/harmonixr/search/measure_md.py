"""The markdown page of ``index measure`` (``measure.md``): the held-out figures of
``search/measure.py`` beside those fitted on validation."""

from __future__ import annotations

from typing import Any

from harmonixr.evaluate.records import Estimate, formatted, value

FIGURES = (
    ("detection_auc", "unknown-detection AUC"),
    ("known_called_unknown", "named-composer pieces called unknown"),
    ("strangers_caught", "strangers caught"),
    ("answer_accuracy_known", "answer accuracy, named composers"),
    ("answer_accuracy_strangers", "answer accuracy, strangers"),
    ("ece_even_prior", "ECE of p(unknown), even prior"),
)


def _n(x: Any) -> str:
    """A figure as text: a value, or a value with its interval, or "–"."""
    return formatted(x)


def _with(v: dict[str, Any], key: str) -> str:
    """A figure with its interval, whether stored as an estimate or (before) beside a
    ``<key>_interval`` list."""
    return Estimate.read(v.get(key), v.get(f"{key}_interval")).format()


def measure_markdown(r: dict[str, Any]) -> str:
    c, v, tl, bk = r["composer"], r["verify"], r.get("timeline", {}), r["barely_known"]
    lines = [
        "# The shipped answers, measured where nothing was fitted",
        "",
        f"Model {str(r.get('model_sha256'))[:12]}; test side: "
        + ", ".join(f"{n} {k}" for k, n in r["test_pieces"].items())
        + " pieces. The answer is the most probable row, at a default prior of 'someone "
        f"else' of {_n(r.get('default_prior', 0.5))}; unknown model: {r['unknown_model']}. "
        "Intervals: 95 % bootstrap over groups (strangers: composers).",
        "",
        "## Fitted on validation vs measured held out",
        "",
        "| figure | validation (fitted on it) | test side (held out) |",
        "|---|---|---|",
        *_side_by_side(r),
        "",
        "## Attribution (test pieces of named composers)",
        "",
        f"- answer accuracy: {_n(c['answer_accuracy'])}",
        f'- called "someone else": {_n(c["called_unknown"])}',
        f"- top-1 among the {c['named_composers']} named composers: {_n(c['top1'])}",
        f"- closed-set ECE: {_n(c['ece'])}",
        *_by_chance(c.get("ece_by_chance")),
        *_as_shown(r.get("composer_as_shown")),
        f'- barely known composers\' test pieces ({bk["pieces"]}) called "someone else": '
        f"{_n(bk['called_unknown'])}",
        "",
        "## Someone else",
        "",
        "| figure | test side | music21 | both, pooled (confounded by source) |",
        "|---|---|---|---|",
    ]
    blocks = [r.get(k, {}) for k in ("open_set_test_side", "open_set_music21", "open_set_all")]
    lines.append(
        "| pieces (known / strangers) | "
        + " | ".join(
            f"{b.get('known_pieces', '–')} / {b.get('stranger_pieces', '–')}" for b in blocks
        )
        + " |"
    )
    for key, label in FIGURES:
        lines.append(f"| {label} | " + " | ".join(_n(b.get(key)) for b in blocks) + " |")
    left_out = r.get("open_set_music21", {}).get("left_out_in_training_corpus")
    lines += [
        "",
        "Pooled, the strangers are mostly music21's vocal and quartet scores and the known pieces "
        "mostly keyboard music, so the last column mixes source with strangeness: read the "
        "first two."
        + (
            f" Left out of music21's: {', '.join(left_out)} (their music is in the training "
            "corpus)."
            if left_out
            else ""
        ),
        "",
        *_known_works(r.get("known_works")),
        "## Verify (test pairs from different groups)",
        "",
        f"- threshold (cosine, fitted on validation): {_n(v.get('threshold'))}",
        f"- balanced accuracy: pair-weighted {_with(v, 'balanced_accuracy')}, group pairs "
        f"equal {_with(v, 'balanced_accuracy_gpe')}",
        f"- ECE at an even prior: pair-weighted {_with(v, 'ece')}, group pairs equal "
        f"{_with(v, 'ece_gpe')}",
        f"- AUC: pair-weighted {_with(v, 'auc')}, group pairs equal {_with(v, 'auc_gpe')}; "
        f"EER {_with(v, 'eer')}; pairs {v.get('pairs')}, same "
        f"{v.get('same', v.get('same_pairs'))}; intervals from "
        f"{Estimate.read(v.get('auc')).resamples or v.get('resamples', 50)} resamples",
        "",
        "## Timeline ("
        + (f"{tl['window_s']:g} s " if tl.get("window_s") else "")
        + "windows of test pieces of named composers)",
        "",
        f"Windows: {tl.get('windows')}; scored with the whole-piece calibration.",
        "",
        f"- top-1 {_n(tl.get('top1'))}; closed-set ECE {_n(tl.get('ece'))}",
        f'- answer accuracy {_n(tl.get("answer_accuracy"))}; called "someone else" '
        f"{_n(tl.get('called_unknown'))}",
        "",
    ]
    return "\n".join(lines)


def _by_chance(b: dict[str, Any] | None, indent: str = "  ") -> list[str]:
    """The ECE that perfectly calibrated answers of the same confidences would show."""
    if not b:
        return []
    p = b["p_value"]
    shown = f"< {1 / b['draws']:.4f}" if p == 0 else _n(p)
    above = b.get("calibrated_above_bar")
    bar = f"; they exceed {_n(b['bar'])} in {_n(above)} of draws" if above is not None else ""
    return [
        f"{indent}- by chance alone, calibrated answers of these confidences show ECE "
        f"{_n(b['expected_if_calibrated'])} on average (95th percentile "
        f"{_n(b['q95_if_calibrated'])}{bar}); p-value of the measured {_n(b['measured'])} "
        f"being chance: {shown} ({b['draws']} draws, every piece counted once)"
    ]


def _as_shown(a: dict[str, Any] | None) -> list[str]:
    """The answer as ``attribute`` shows it with known works on."""
    if not a:
        return []
    return [
        f"- as shown with known works on (each piece asked as if it were not indexed; a work "
        f"named for {a['work_named']} of {a['pieces']}): answer accuracy "
        f"{_n(a['answer_accuracy'])}, ECE of its probability {_n(a['ece'])}",
        *_by_chance(a.get("ece_by_chance")),
        f"  - pieces with a work named: ECE {_n(a.get('ece_work_named'))}; without: ECE "
        f"{_n(a.get('ece_no_work'))}, answer accuracy {_n(a.get('answer_accuracy_no_work'))}",
    ]


def _side_by_side(r: dict[str, Any]) -> list[str]:
    f = r.get("fitted_on_validation") or {}
    fc, fv, fo = f.get("composer") or {}, f.get("verify") or {}, f.get("operating_point") or {}
    c, v = r["composer"], r["verify"]
    rows = [
        ("composer top-1 (named)", fc.get("top1_accuracy"), c["top1"]),
        ("composer ECE (named)", fc.get("ece"), c["ece"]),
        ("named pieces called someone else", fo.get("named_called_unknown"), c["called_unknown"]),
        ("verify balanced accuracy", fv.get("balanced_accuracy"), v.get("balanced_accuracy")),
        ("verify ECE", fv.get("ece"), v.get("ece")),
    ]
    return [f"| {name} | {_value(a)} | {_value(b)} |" for name, a, b in rows]


def _value(x: Any) -> str:
    """A figure's value alone (the side-by-side table has no room for intervals)."""
    return formatted(value(x))


def _known_works(k: dict[str, Any] | None) -> list[str]:
    if not k:
        return []

    def exact(g: dict[str, Any] | None) -> str:
        if not g:
            return ""
        lo, hi = g["exact_95"]
        return (
            f"; by group, {g['groups_all_right']} of {g['groups']} groups all right, exact 95 % "
            f"interval [{lo:.3f}, {hi:.3f}]"
        )

    return [
        "## Known works (test pieces, each asked as if it were not indexed)",
        "",
        f"- pieces with another rendition indexed ({k['with_rendition']}): named right "
        f"{_n(k['identified_right'])}{exact(k.get('identified_right_by_group'))}",
        f'- pieces without ({k["without"]}): "no known work" {_n(k["no_known_work"])}'
        f"{exact(k.get('no_known_work_by_group'))}",
        f"- a wrong work named: {k['named_wrong_work']} pieces; ECE of the probability "
        f"{_n(k['probability_ece'])}; rule {k['rule']}, overlap threshold "
        f"{_n(k['threshold'])} (fitted on validation)",
        "",
    ]
