"""What a user of a run's index gets, measured on its test side and on real strangers.

The index's calibration was fitted on the run's training and validation sides (and its unknown
model on other encoders' strangers); here every figure comes from pieces none of that saw:

- the run's **test side**: pieces of named composers (answer accuracy, how many are called
  "someone else", closed-set ECE), of barely known composers, and of composers with no training
  piece at all (real strangers to this encoder);
- **music21's corpus**: composers no corpus of ours holds (Palestrina, Monteverdi, Josquin,
  the Trecento…) against music21 scores by named composers (same converter, same textures);
- ``verify`` on all test pairs from different groups at the shipped threshold;
- the timeline's windows of test pieces (the run's crop), scored with the whole-piece calibration.

The result is written beside the index's fitted-on figures (``calibration.json`` →
``report.held_out``), so ``harmonixr index info`` prints both.

One module, over 400 lines: the held-out measurement is one protocol (test side, music21's
strangers, verify, timeline) whose figures are stored together beside the fitted-on ones."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_json, atomic_write
from harmonixr.data.cache import TensorCache
from harmonixr.data.splits import SIDES
from harmonixr.evaluate.bootstrap import bootstrap_interval, bootstrap_intervals
from harmonixr.evaluate.calibrate import verify_figures, verify_pairs
from harmonixr.evaluate.crossval import _clean
from harmonixr.evaluate.metrics import expected_calibration_error
from harmonixr.evaluate.openset import _fmt, open_set_figures
from harmonixr.midi.files import load_files
from harmonixr.search.index import INDEX_DIR, Index, check_index
from harmonixr.train.rundir import Run

Progress = Callable[[str], None]
MUSIC21_TIMEOUT_S = 1200.0  # per work: the slowest quartet took over 90 s on 2 cores
MAX_VERIFY_PAIRS = 200_000


def _music21(run: Run, encoder: Any, folder: Path, progress: Progress) -> dict[str, Any]:
    """Embeddings and composers of music21's strangers and of its scores by known composers."""
    from harmonixr.midi.builtin import (
        IN_THE_SCORE_CORPUS,
        KNOWN_IN_MUSIC21,
        STRANGERS,
        read_music21,
    )

    out: dict[str, Any] = {}
    for name, selection in (("strangers", STRANGERS), ("known", KNOWN_IN_MUSIC21)):
        progress(f"music21 {name}: converting (once) and embedding")
        # a long time limit, so that which works convert does not depend on the machine's speed
        listing = read_music21(selection, folder / name, timeout=MUSIC21_TIMEOUT_S)
        pieces = [p for p in listing.pieces if Path(p.path).stem not in IN_THE_SCORE_CORPUS]
        seen = [Path(p.path).name for p in listing.pieces if p not in pieces]
        got = load_files([p.path for p in pieces], run.tensor)
        keep = [(p, g) for p, g in zip(pieces, got, strict=True) if hasattr(g, "tensor")]
        tensors = [g.tensor for _, g in keep]
        emb = run.embed(tensors, encoder)
        out[name] = {
            "emb": emb.astype(np.float64),
            "composer": np.array([p.composer for p, _ in keep], dtype=object),
            "group": np.array([f"m21:{p.group}" for p, _ in keep], dtype=object),
            "skipped": len(pieces) - len(keep) + len(listing.skipped),
            "names": [Path(p.path).name for p, _ in keep],  # what was measured, to compare
            "in_training_corpus": seen,  # left out: the model may have trained on their music
        }
    return out


def _interval(stat, units, resamples, seed) -> dict[str, float | None]:
    lo, hi = bootstrap_interval(stat, units, resamples, seed)
    return {"value": stat(np.ones(len(units))), "lo": lo, "hi": hi}


def measure_index(
    run_dir: str | Path,
    data: str | Path,
    *,
    music21_dir: str | Path | None = None,
    resamples: int = 300,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure ``RUN/index`` on the run's test side of the cache ``data`` and on music21's
    strangers (converted once into ``music21_dir``; skipped when None)."""
    say = progress or (lambda s: None)
    run_dir = Path(run_dir)
    run = Run.open(run_dir)
    encoder = run.encoder()
    index = Index.load(run_dir / INDEX_DIR)
    check_index(index, run)
    cal = index.calibration
    if not cal.composers:
        raise ValueError(f"{run_dir}: the index names no composer; nothing to measure")
    vectors = getattr(index.store, "vectors", None)
    if vectors is None:
        raise ValueError(f"{run_dir}: measuring needs the FAISS store (its vectors on disk)")
    by_sha = {it.sha256: vectors[i] for i, it in enumerate(index.items)}
    with TensorCache(data) as cache:
        rows = cache.pieces()
        split = run.split(rows)
        run.check_split(split, rows)  # the pieces still have the content and groups it had
        missing = [rows[i].path for s in SIDES for i in split[s] if rows[i].sha256 not in by_sha]
        if missing:
            raise ValueError(f"{run_dir}: {len(missing)} split pieces not indexed: {missing[0]}")
        test = split["test"]
        tensors = {i: cache.load(rows[i]) for i in test}
    train_composers = {rows[i].composer for i in split["train"]}
    named = {c: k for k, c in enumerate(cal.composers)}

    def side(idx: list[int]) -> dict[str, np.ndarray]:
        return {
            "emb": np.stack([by_sha[rows[i].sha256] for i in idx]).astype(np.float64),
            "composer": np.array([rows[i].composer for i in idx], dtype=object),
            "group": np.array([rows[i].group for i in idx], dtype=object),
        }

    def scored(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        _, sims, probs, unknown = index.scores(emb)
        return sims, unknown, cal.decide(probs, unknown)

    t = side(test)
    kind = np.array(
        [
            "named" if c in named else ("barely known" if c in train_composers else "stranger")
            for c in t["composer"]
        ]
    )
    sims, unknown, answers = scored(t["emb"])
    labels = np.array([named.get(c, -1) for c in t["composer"]])
    report: dict[str, Any] = {
        "model_sha256": index.manifest.get("model_sha256"),
        "operating_point": cal.operating_point,
        "unknown_model": cal.unknown_source,
        "test_pieces": {k: int((kind == k).sum()) for k in ("named", "barely known", "stranger")},
        "fitted_on_validation": {
            k: cal.report.get(k) for k in ("named", "composer", "operating_point", "verify")
        },
    }
    nm = kind == "named"
    closed = np.exp(cal.closed_log_probabilities(t["emb"][nm], sims[nm]))
    g = t["group"][nm]
    right = answers[nm] == labels[nm]
    report["composer"] = {
        "measured_on": "test",
        "pieces": int(nm.sum()),
        "named_composers": len(cal.composers),
        "top1": _interval(
            lambda w: np.dot(w, closed.argmax(1) == labels[nm]) / w.sum(), g, resamples, seed
        ),
        "ece": _interval(
            lambda w: expected_calibration_error(closed, labels[nm], weights=w), g, resamples, seed
        ),
        "answer_accuracy": _interval(lambda w: np.dot(w, right) / w.sum(), g, resamples, seed),
        "called_unknown": _interval(
            lambda w: np.dot(w, answers[nm] < 0) / w.sum(), g, resamples, seed
        ),
    }
    bk = kind == "barely known"
    report["barely_known"] = {
        "measured_on": "test",
        "pieces": int(bk.sum()),
        "called_unknown": _interval(
            lambda w: np.dot(w, answers[bk] < 0) / w.sum(), t["group"][bk], resamples, seed
        )
        if bk.any()
        else None,
    }

    def block(known: dict[str, np.ndarray], strangers: dict[str, np.ndarray]) -> dict[str, Any]:
        _, pk, ak = scored(known["emb"])
        _, ps, _ = scored(strangers["emb"]) if len(strangers["emb"]) else (None, np.zeros(0), None)
        lab = np.array([named[c] for c in known["composer"]])
        units = np.concatenate(
            [known["group"], np.array([f"c:{c}" for c in strangers["composer"]])]
        )
        return open_set_figures(pk, ps, cal.operating_point, ak == lab, units, resamples, seed)

    st = kind == "stranger"
    known_t = {k: v[nm] for k, v in t.items()}
    strangers_t = {k: v[st] for k, v in t.items()}
    say("open set on the test side")
    report["open_set_test_side"] = {"measured_on": "test", **block(known_t, strangers_t)}
    if music21_dir is not None:
        m = _music21(run, encoder, Path(music21_dir), say)
        keep = np.array([c in named for c in m["known"]["composer"]], bool)
        mk = {k: m["known"][k][keep] for k in ("emb", "composer", "group")}
        ms = {k: m["strangers"][k] for k in ("emb", "composer", "group")}
        report["open_set_music21"] = {
            "measured_on": "music21 scores (strangers vs named composers)",
            "stranger_composers": sorted(set(ms["composer"])),
            "skipped": m["strangers"]["skipped"] + m["known"]["skipped"],
            "pieces": sorted(m["strangers"]["names"] + m["known"]["names"]),
            "left_out_in_training_corpus": m["strangers"]["in_training_corpus"]
            + m["known"]["in_training_corpus"],
            **block(mk, ms),
        }
        both = {k: np.concatenate([known_t[k], mk[k]]) for k in mk}
        report["open_set_all"] = {
            # pooled, strangers are mostly music21 vocal and quartet scores and known pieces
            # mostly keyboard music: this mixes source with strangeness; read the two apart
            "measured_on": "test side and music21 pooled (confounded by source)",
            **block(both, {k: np.concatenate([strangers_t[k], ms[k]]) for k in ms}),
        }
    say("verify on test pairs")
    report["verify"] = _verify_test(cal, t, resamples, seed)
    say("timeline windows")
    report["timeline"] = _timeline(
        run,
        encoder,
        cal,
        index,
        [tensors[i] for i in np.array(test)[nm]],
        labels[nm],
        g,
        resamples,
        seed,
    )
    return _clean(report)


def _verify_test(cal, t: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, Any]:
    i, j = verify_pairs(list(t["group"]), MAX_VERIFY_PAIRS, seed)  # as validation's are drawn
    cos = np.einsum("nd,nd->n", t["emb"][i], t["emb"][j])
    p = cal.same_probability(cos)
    y = t["composer"][i] == t["composer"][j]
    out: dict[str, Any] = {"measured_on": "test", "threshold": cal.threshold}
    out.update(verify_figures(p, y, t["group"][i], t["group"][j]))
    _, unit = np.unique(t["group"], return_inverse=True)
    ua, ub = unit[i], unit[j]

    ga, gb = t["group"][i], t["group"][j]

    def stats(w: np.ndarray) -> dict[str, float]:
        pw = w[ua] * w[ub]  # each pair as often as both its groups were drawn
        m = pw > 0
        return verify_figures(p[m], y[m], ga[m], gb[m], pw[m])

    keys = ("balanced_accuracy", "balanced_accuracy_gpe", "ece", "ece_gpe", "auc")
    for key, (lo, hi) in bootstrap_intervals(stats, keys, t["group"], resamples, seed).items():
        out[f"{key}_interval"] = [lo, hi]
    out["resamples"] = resamples
    return out


def _timeline(
    run: Run, encoder: Any, cal, index, tensors, labels, groups, resamples, seed
) -> dict[str, Any]:
    """Non-overlapping windows of the run's crop over the test pieces of named composers,
    scored as ``Harmonixr.timeline`` scores them (the whole-piece calibration)."""
    from harmonixr.model.embed import embed_windows, piece_windows

    crop = run.crop_frames
    windows = [w for w in piece_windows(tensors, crop, crop) if w.valid >= crop // 2]
    if not windows:
        return {"windows": 0}
    z = embed_windows(encoder, tensors, windows, crop).astype(np.float64)
    sims = index.named_similarities(index.composer_similarities(z))
    closed = np.exp(cal.closed_log_probabilities(z, sims))
    piece = np.array([w.piece for w in windows])
    lab, units = labels[piece], np.asarray(groups)[piece]
    answers = cal.answers(z, sims)
    top1 = (closed.argmax(1) == lab).astype(float)

    def share(v: np.ndarray):
        return lambda w: float(np.dot(w, v) / w.sum())

    return {
        "measured_on": "test",
        "window_s": round(crop * run.frame_seconds, 6),
        "windows": len(windows),
        "top1": _interval(share(top1), units, resamples, seed),
        "ece": _interval(
            lambda w: expected_calibration_error(closed, lab, weights=w), units, resamples, seed
        ),
        "answer_accuracy": _interval(share(answers == lab), units, resamples, seed),
        "called_unknown": _interval(share(answers < 0), units, resamples, seed),
    }


def store_held_out(run_dir: str | Path, report: dict[str, Any]) -> None:
    """Put the held-out figures beside the fitted-on ones in the index's calibration."""
    path = Path(run_dir) / INDEX_DIR / "calibration.json"
    cal = json.loads(path.read_text())
    cal["report"]["held_out"] = report
    atomic_json(path, cal, indent=1)


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
    if isinstance(x, dict):
        return _fmt(x)
    return "–" if x is None else f"{x:.3f}"


def _with(v: dict[str, Any], key: str) -> str:
    iv = v.get(f"{key}_interval")
    return f"{_n(v.get(key))} {_pair(iv)}".strip()


def save_measure(
    run_dir: str | Path, report: dict[str, Any], out_dir: str | Path | None = None
) -> list[Path]:
    """Store the held-out figures in the run's calibration (``store_held_out``) and write
    ``measure.json`` and ``measure.md`` into ``out_dir`` (default: the run directory)."""
    store_held_out(run_dir, report)
    target = Path(out_dir or run_dir)
    target.mkdir(parents=True, exist_ok=True)
    atomic_json(target / "measure.json", report, indent=1)
    atomic_write(target / "measure.md", measure_markdown(report))
    return [target / "measure.json", target / "measure.md"]


def measure_markdown(r: dict[str, Any]) -> str:
    c, v, tl, bk = r["composer"], r["verify"], r.get("timeline", {}), r["barely_known"]
    lines = [
        "# The shipped answers, measured where nothing was fitted",
        "",
        f"Model {str(r.get('model_sha256'))[:12]}; test side: "
        + ", ".join(f"{n} {k}" for k, n in r["test_pieces"].items())
        + f" pieces. Operating point p(unknown) ≥ {_n(r['operating_point'])}; unknown model: "
        f"{r['unknown_model']}. Intervals: 95 % bootstrap over groups (strangers: composers).",
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
        "## Verify (test pairs from different groups)",
        "",
        f"- threshold (cosine, fitted on validation): {_n(v.get('threshold'))}",
        f"- balanced accuracy: pair-weighted {_with(v, 'balanced_accuracy')}, group pairs "
        f"equal {_with(v, 'balanced_accuracy_gpe')}",
        f"- ECE at an even prior: pair-weighted {_with(v, 'ece')}, group pairs equal "
        f"{_with(v, 'ece_gpe')}",
        f"- AUC (pair-weighted): {_with(v, 'auc')}; pairs {v.get('pairs')}, same "
        f"{v.get('same_pairs')}; intervals from {v.get('resamples', 50)} resamples",
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


def _side_by_side(r: dict[str, Any]) -> list[str]:
    f = r.get("fitted_on_validation") or {}
    fc, fv, fo = f.get("composer") or {}, f.get("verify") or {}, f.get("operating_point") or {}
    c, v = r["composer"], r["verify"]
    rows = [
        ("composer top-1 (named)", fc.get("top1_accuracy"), c["top1"]["value"]),
        ("composer ECE (named)", fc.get("ece"), c["ece"]["value"]),
        (
            "named pieces called someone else",
            fo.get("named_called_unknown"),
            c["called_unknown"]["value"],
        ),
        ("verify balanced accuracy", fv.get("balanced_accuracy"), v.get("balanced_accuracy")),
        ("verify ECE", fv.get("ece"), v.get("ece")),
    ]

    def num(x: Any) -> str:
        return "–" if x is None else f"{x:.3f}"

    return [f"| {name} | {num(a)} | {num(b)} |" for name, a, b in rows]


def _pair(iv: Any) -> str:
    if not iv or iv[0] is None:
        return ""
    return f"[{iv[0]:.3f}, {iv[1]:.3f}]"
