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
strangers, verify, timeline) whose figures are stored together beside the fitted-on ones and
printed side by side with them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_json, atomic_write
from harmonixr.data.cache import TensorCache
from harmonixr.data.splits import SIDES
from harmonixr.evaluate.bootstrap import Bootstrap
from harmonixr.evaluate.metrics import expected_calibration_error
from harmonixr.evaluate.openset import open_set_figures
from harmonixr.evaluate.protocols import topk_credit
from harmonixr.evaluate.records import Estimate, Side, json_ready
from harmonixr.evaluate.reliability import confidence_ece, ece_by_chance
from harmonixr.evaluate.unknown import open_set_verdict
from harmonixr.evaluate.verification import Pairs, pair_figures, verify_figures, verify_pairs
from harmonixr.midi.files import load_files
from harmonixr.search.index import INDEX_DIR, Index, check_index
from harmonixr.search.measure_md import measure_markdown
from harmonixr.search.works import asked_without_self, measure_works
from harmonixr.train.rundir import Run

Progress = Callable[[str], None]
MUSIC21_TIMEOUT_S = 1200.0  # per work: the slowest quartet took over 90 s on 2 cores
MAX_VERIFY_PAIRS = 200_000


def _music21(run: Run, encoder: Any, folder: Path, progress: Progress) -> dict[str, Any]:
    """Music21's strangers and its scores by known composers as sides, with what was skipped,
    what was measured and what was left out (their music is in the training corpus)."""
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
        emb = run.embed([g.tensor for _, g in keep], encoder)
        out[name] = {
            "side": Side.of(
                emb, [p.composer for p, _ in keep], [f"m21:{p.group}" for p, _ in keep]
            ),
            "skipped": len(pieces) - len(keep) + len(listing.skipped),
            "names": [Path(p.path).name for p, _ in keep],  # what was measured, to compare
            "in_training_corpus": seen,  # left out: the model may have trained on their music
        }
    return out


class _Measure:
    """The index's answers on sides, each figure an estimate over the side's units."""

    def __init__(self, index: Index, resamples: int, seed: int) -> None:
        self.index, self.cal = index, index.calibration
        self.named = {c: k for k, c in enumerate(self.cal.composers)}
        self.boot = Bootstrap(resamples, seed)

    def scored(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        _, sims, probs, unknown = self.index.scores(emb)
        return sims, unknown, self.cal.decide(probs, unknown)

    def share(self, hits: np.ndarray, units: np.ndarray) -> dict:
        """The share of ``hits`` (one per piece), each piece weighing what its unit drew."""
        return self.boot.population(units).mean(hits, "pieces").to_json()

    def estimate(self, stat: Callable[[np.ndarray], float], units: np.ndarray) -> dict:
        return self.boot.population(units).item_estimate(stat, "pieces").to_json()

    def composer(self, named: Side) -> dict[str, Any]:
        """Test pieces of named composers: top-1 among them, closed-set ECE, the answer's
        accuracy and how many are called "someone else"."""
        sims, _, answers = self.scored(named.embeddings)
        labels = np.array([self.named[c] for c in named.composer])
        closed = np.exp(self.cal.closed_log_probabilities(named.embeddings, sims))
        top1 = topk_credit(closed, labels, 1)
        return {
            "measured_on": "test",
            "pieces": len(named),
            "named_composers": len(self.cal.composers),
            "top1": self.share(top1, named.unit),
            "ece": self.estimate(
                lambda w: expected_calibration_error(closed, labels, weights=w), named.unit
            ),
            "answer_accuracy": self.share(answers == labels, named.unit),
            "called_unknown": self.share(answers < 0, named.unit),
            "ece_by_chance": ece_by_chance(closed.max(1), closed.argmax(1) == labels).to_json(),
        }

    def shown(
        self, emb: np.ndarray, work_composer: np.ndarray, p_work: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per piece, the answer ``attribute`` shows with known works on (``given_work``, the
        open set withdrawn), its probability and whether a work was named: a work named
        (``p_work`` ≥ 0.5) gives its composer ``work_composer`` that probability and the
        model's table shares the rest."""
        sims, _, _ = self.scored(emb)
        probs = np.exp(self.cal.closed_log_probabilities(emb, sims))
        p = np.where(p_work >= 0.5, p_work, 0.0)
        col = np.array([self.named.get(c, -1) for c in work_composer], np.int64)
        probs *= (1.0 - p)[:, None]
        inside = (p > 0) & (col >= 0)
        probs[inside, col[inside]] += p[inside]
        outside = np.where(col < 0, p, 0.0)  # a work by a composer the model cannot name
        names = np.asarray(self.cal.composers, dtype=object)
        said = np.where(outside > probs.max(1), work_composer, names[probs.argmax(1)])
        return said, np.maximum(probs.max(1), outside), p > 0

    def as_shown(self, named: Side, work_composer: np.ndarray, p_work: np.ndarray) -> dict:
        """The answer as ``attribute`` shows it with known works on (``shown``) for test pieces
        of named composers, each asked as if it were not indexed: ``work_composer`` and
        ``p_work`` are each piece's closest other piece's composer and the probability that it
        renders the same composition."""
        said, conf, work = self.shown(named.embeddings, work_composer, p_work)
        right = said == named.composer
        part = {
            key: self.estimate(
                lambda w, m=m: confidence_ece(conf[m], right[m], weights=w), named.unit[m]
            )
            for key, m in (("ece_work_named", work), ("ece_no_work", ~work))
            if m.any()
        }
        return {
            "measured_on": "test, each piece asked as if it were not indexed",
            "pieces": len(named),
            "work_named": int(work.sum()),
            "answer_accuracy": self.share(right, named.unit),
            "ece": self.estimate(lambda w: confidence_ece(conf, right, weights=w), named.unit),
            "ece_by_chance": ece_by_chance(conf, right).to_json(),
            "answer_accuracy_no_work": self.share(right[~work], named.unit[~work])
            if (~work).any()
            else None,
            **part,
        }

    def open_set(self, known: Side, strangers: Side) -> dict[str, Any]:
        """Detection by p(unknown) at an even prior (AUC, ECE); caught and called unknown by
        the answers themselves ("someone else" the top row, at the index's default prior)."""
        sk, _, ak = self.scored(known.embeddings)
        pk = self.cal.unknown_probability(known.embeddings, sk, 0.5)
        if len(strangers):
            su, _, au = self.scored(strangers.embeddings)
            pu = self.cal.unknown_probability(strangers.embeddings, su, 0.5)
        else:
            pu, au = np.zeros(0), np.zeros(0, int)
        lab = np.array([self.named[c] for c in known.composer])
        units = np.concatenate([known.unit, np.array([f"c:{c}" for c in strangers.composer])])
        said = np.concatenate([ak < 0, au < 0])
        return open_set_figures(
            pk, pu, said, ak == lab, units, self.boot.resamples, self.boot.seed, answered=True
        )

    def verify(self, t: Side) -> dict[str, Any]:
        """``verify`` on test pairs from different groups (drawn as validation's are) at the
        shipped threshold: balanced accuracy and ECE at an even prior (both weightings), and
        every verification metric of ``evaluate.verification`` on its probability."""
        i, j = verify_pairs(list(t.unit), MAX_VERIFY_PAIRS, self.boot.seed)
        cos = np.einsum("nd,nd->n", t.embeddings[i], t.embeddings[j])
        p = self.cal.same_probability(cos)
        y = t.composer[i] == t.composer[j]
        out: dict[str, Any] = {"measured_on": "test", "threshold": self.cal.threshold}
        pairs = Pairs(-p, y, i, j, t.unit, np.full(len(y), "other"))
        out.update(pair_figures(pairs, self.boot))
        pop = self.boot.population(t.unit)
        ua, ub = pop.codes[i], pop.codes[j]
        ga, gb = t.unit[i], t.unit[j]

        def stats(w: np.ndarray) -> dict[str, float]:
            pw = w[ua] * w[ub]  # each pair as often as both its groups were drawn
            m = pw > 0
            return verify_figures(p[m], y[m], ga[m], gb[m], pw[m])

        keys = ("balanced_accuracy", "balanced_accuracy_gpe", "ece", "ece_gpe")
        point = verify_figures(p, y, ga, gb)
        for key, iv in pop.intervals(stats, keys).items():
            if key not in point:
                continue  # one class missing: no figure
            weighting = "unit pairs" if key.endswith("_gpe") else "pairs"
            out[key] = Estimate(point.get(key), *iv, weighting, self.boot.resamples).to_json()
        return out

    def timeline(self, run: Run, encoder: Any, tensors: list, named: Side) -> dict[str, Any]:
        """Non-overlapping windows of the run's crop over the test pieces of named composers,
        scored as ``Harmonixr.timeline`` scores them (the whole-piece calibration)."""
        from harmonixr.model.embed import embed_windows, piece_windows

        crop = run.crop_frames
        windows = [w for w in piece_windows(tensors, crop, crop) if w.valid >= crop // 2]
        if not windows:
            return {"windows": 0}
        z = embed_windows(encoder, tensors, windows, crop).astype(np.float64)
        sims = self.index.named_similarities(self.index.composer_similarities(z))
        closed = np.exp(self.cal.closed_log_probabilities(z, sims))
        piece = np.array([w.piece for w in windows])
        lab = np.array([self.named[c] for c in named.composer])[piece]
        units = named.unit[piece]
        answers = self.cal.answers(z, sims)
        return {
            "measured_on": "test",
            "window_s": round(crop * run.frame_seconds, 6),
            "windows": len(windows),
            "top1": self.share(topk_credit(closed, lab, 1), units),
            "ece": self.estimate(
                lambda w: expected_calibration_error(closed, lab, weights=w), units
            ),
            "answer_accuracy": self.share(answers == lab, units),
            "called_unknown": self.share(answers < 0, units),
        }


def _test_side(run: Run, index: Index, data: str | Path) -> tuple[Side, list, set[str], list]:
    """The run's test side as the index embedded it, its tensors, the training composers and
    its pieces' positions in the index."""
    vectors = getattr(index.store, "vectors", None)
    if vectors is None:
        raise ValueError(f"{run.root}: measuring needs the FAISS store (its vectors on disk)")
    by_sha = {it.sha256: vectors[i] for i, it in enumerate(index.items)}
    with TensorCache(data) as cache:
        rows = cache.pieces()
        split = run.split(rows)
        run.check_split(split, rows)  # the pieces still have the content and groups it had
        missing = [rows[i].path for s in SIDES for i in split[s] if rows[i].sha256 not in by_sha]
        if missing:
            raise ValueError(f"{run.root}: {len(missing)} split pieces not indexed: {missing[0]}")
        test = [rows[i] for i in split["test"]]
        tensors = [cache.load(r) for r in test]
    emb = np.stack([by_sha[r.sha256] for r in test]).astype(np.float64)
    at = {it.sha256: i for i, it in enumerate(index.items)}
    trained = {rows[i].composer for i in split["train"]}
    return Side.from_rows(test, emb), tensors, trained, [at[r.sha256] for r in test]


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
    # "someone else" is measured as fitted: whether it stays an answer is this measure's to
    # decide again, whatever an earlier one decided (a withdrawn one scores every piece 0)
    index.calibration = replace(index.calibration, open_set_withdrawn=False, open_set_note="")
    cal = index.calibration
    if not cal.composers:
        raise ValueError(f"{run_dir}: the index names no composer; nothing to measure")
    t, tensors, train_composers, at = _test_side(run, index, data)
    m = _Measure(index, resamples, seed)
    kind = np.array(
        [
            "named" if c in m.named else ("barely known" if c in train_composers else "stranger")
            for c in t.composer
        ]
    )
    nm, bk, st = kind == "named", kind == "barely known", kind == "stranger"
    report: dict[str, Any] = {
        "model_sha256": index.manifest.get("model_sha256"),
        "operating_point": cal.operating_point,
        "default_prior": cal.default_prior,
        "unknown_model": cal.unknown_source,
        "test_pieces": {k: int((kind == k).sum()) for k in ("named", "barely known", "stranger")},
        "fitted_on_validation": {
            k: cal.report.get(k) for k in ("named", "composer", "operating_point", "verify")
        },
        "composer": m.composer(t.take(nm)),
    }
    barely = t.take(bk)
    _, _, answers = m.scored(barely.embeddings)
    report["barely_known"] = {
        "measured_on": "test",
        "pieces": len(barely),
        "called_unknown": m.share(answers < 0, barely.unit) if len(barely) else None,
    }
    say("open set on the test side")
    known_t, strangers_t = t.take(nm), t.take(st)
    report["open_set_test_side"] = {"measured_on": "test", **m.open_set(known_t, strangers_t)}
    if music21_dir is not None:
        report.update(
            _music21_blocks(m, run, encoder, Path(music21_dir), known_t, strangers_t, say)
        )
    if index.works is not None and index.work_fit is not None:
        say("known works on the test side")
        works = [it.work for it in index.items]
        asked = asked_without_self(index.works, at)  # each test piece without itself, once
        report["known_works"] = measure_works(
            index.works, works, index.work_fit, at, t.unit, m.boot, asked
        )
        best, overlap = asked
        fit = index.work_fit
        p_work = np.where(fit.known(overlap), fit.probability(overlap), 0.0)
        closest = np.array([index.items[b].composer for b in best], dtype=object)
        report["composer_as_shown"] = m.as_shown(t.take(nm), closest[nm], p_work[nm])
    say("verify on test pairs")
    report["verify"] = m.verify(t)
    say("timeline windows")
    named_tensors = [x for x, keep in zip(tensors, nm, strict=True) if keep]
    report["timeline"] = m.timeline(run, encoder, named_tensors, t.take(nm))
    return json_ready(report)


def _music21_blocks(
    m: _Measure, run: Run, encoder: Any, folder: Path, known_t: Side, strangers_t: Side, say
) -> dict[str, Any]:
    got = _music21(run, encoder, folder, say)
    known = got["known"]["side"]
    mk = known.take(np.array([c in m.named for c in known.composer], bool))
    ms = got["strangers"]["side"]
    return {
        "open_set_music21": {
            "measured_on": "music21 scores (strangers vs named composers)",
            "stranger_composers": sorted(set(ms.composer)),
            "skipped": got["strangers"]["skipped"] + got["known"]["skipped"],
            "pieces": sorted(got["strangers"]["names"] + got["known"]["names"]),
            "left_out_in_training_corpus": got["strangers"]["in_training_corpus"]
            + got["known"]["in_training_corpus"],
            **m.open_set(mk, ms),
        },
        # pooled, strangers are mostly music21 vocal and quartet scores and known pieces
        # mostly keyboard music: this mixes source with strangeness; read the two apart
        "open_set_all": {
            "measured_on": "test side and music21 pooled (confounded by source)",
            **m.open_set(Side.concat([known_t, mk]), Side.concat([strangers_t, ms])),
        },
    }


def store_held_out(run_dir: str | Path, report: dict[str, Any]) -> None:
    """Put the held-out figures beside the fitted-on ones in the index's calibration, and
    withdraw "someone else" as an answer when they are below ``OPEN_SET_BAR``."""
    path = Path(run_dir) / INDEX_DIR / "calibration.json"
    cal = json.loads(path.read_text())
    cal["report"]["held_out"] = report
    pooled = report.get("open_set_all") or report.get("open_set") or {}
    cal["open_set_withdrawn"], cal["open_set_note"] = open_set_verdict(pooled)
    atomic_json(path, cal, indent=1)


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
