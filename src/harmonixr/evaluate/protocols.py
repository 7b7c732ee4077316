"""The evaluation protocols (docs/architecture.md) on whole-piece embeddings of one method.

Every method (the model, an untrained model, each baseline) is an embedding per piece; two
pieces are compared by ``metrics.cosine_distance``: ``1 − a·b``, 1 − cosine for normalised
embeddings. Choices (threshold, probe regularisation) use the validation side
only; the held-out side (test, or val with ``--split val``) is only measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from harmonixr.data.pairs import protocol_pair_sets
from harmonixr.evaluate.bootstrap import bootstrap_interval
from harmonixr.evaluate.metrics import (
    StratifiedAUC,
    balanced_accuracy,
    centroids,
    cosine_distance,
    equal_error_rate,
    group_pair_weights,
    macro_f1,
    pair_set_protocol,
    retrieval_scores,
    roc_auc,
    topk_accuracy,
    tpr_at_fpr,
)

PROBE_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
TPR_FPR = 0.01


@dataclass
class Side:
    """The pieces of one split side and their embeddings for one method."""

    emb: np.ndarray  # (N, D)
    composer: np.ndarray  # (N,) str
    group: np.ndarray  # (N,) str, the leak-free unit
    work: np.ndarray  # (N,) str
    performer: np.ndarray  # (N,) str, "" unknown

    def __len__(self) -> int:
        return int(self.emb.shape[0])


@dataclass
class Settings:
    seed: int = 0
    pairs: int = 1000  # per pair set of the pairs protocol
    resamples: int = 1000
    k: int = 10


@dataclass
class Curves:
    """What the pictures need: all-pairs distances and labels, and the pairs protocol's
    threshold."""

    d: np.ndarray = field(default_factory=lambda: np.zeros(0))
    y: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    threshold: float = float("nan")


def cross_pairs(side: Side) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) of pieces from different groups."""
    ii, jj = np.triu_indices(len(side), k=1)
    keep = side.group[ii] != side.group[jj]
    return ii[keep], jj[keep]


def _auc_with_interval(
    d: np.ndarray,
    y: np.ndarray,
    gi: np.ndarray,
    gj: np.ndarray,
    groups: np.ndarray,
    s: Settings,
    base: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """AUC and its bootstrap interval over groups: a pair's weight is the product of its two
    pieces' group multiplicities in the resample (times ``base``, a weight per pair)."""
    auc = roc_auc(d, y, weights=base)

    def stat(w: np.ndarray) -> float:
        pw = w[gi] * w[gj]
        if not (pw[y].any() and pw[~y].any()):
            return float("nan")  # a resample without one of the classes
        return roc_auc(d, y, weights=pw if base is None else pw * base)

    lo, hi = bootstrap_interval(stat, groups, s.resamples, s.seed)
    return auc, lo, hi


def verification(held: Side, s: Settings, prefix: str = "verify") -> tuple[dict, Curves]:
    """All pairs of held-out pieces from different groups: AUC pair-weighted and with every
    pair of groups weighing the same (``_gpe``), each with a 95 % interval; EER, TPR at 1 %
    FPR."""
    i, j = cross_pairs(held)
    y = held.composer[i] == held.composer[j]
    d = cosine_distance(held.emb[i], held.emb[j])
    out: dict[str, float] = {f"{prefix}_pairs": float(y.size), f"{prefix}_same": float(y.sum())}
    if 0 < y.sum() < y.size:
        auc, lo, hi = _auc_with_interval(d, y, i, j, held.group, s)
        gpe = group_pair_weights(held.group[i], held.group[j])
        auc_g, lo_g, hi_g = _auc_with_interval(d, y, i, j, held.group, s, gpe)
        out.update(
            {
                f"{prefix}_auc": auc,
                f"{prefix}_auc_lo": lo,
                f"{prefix}_auc_hi": hi,
                f"{prefix}_auc_gpe": auc_g,
                f"{prefix}_auc_gpe_lo": lo_g,
                f"{prefix}_auc_gpe_hi": hi_g,
                f"{prefix}_eer": equal_error_rate(d, y),
                f"{prefix}_tpr_at_1fpr": tpr_at_fpr(d, y, TPR_FPR),
            }
        )
    return out, Curves(d, y)


def performer_control(held: Side, s: Settings) -> dict[str, float]:
    """The performer control: among held-out pairs of *different* composers (and different
    groups) whose performers are known, does the similarity tell the pairs played by one
    performer from those played by two? Pairs are compared only within the same pair of
    composers (a performer's repertoire would otherwise stand in for the performer): AUC 0.5,
    the embedding does not hear the performer; towards 1, it does. Also the share of
    same-composer pairs that share a performer."""
    i, j = cross_pairs(held)
    known = (held.performer[i] != "") & (held.performer[j] != "")
    y_all = held.composer[i] == held.composer[j]
    same_perf = known & (held.performer[i] == held.performer[j])
    out = {
        "conf_same_performer_share": float(same_perf[y_all].mean()) if y_all.any() else np.nan,
    }
    keep = known & ~y_all
    i, j = i[keep], j[keep]
    y = held.performer[i] == held.performer[j]
    pairs = zip(held.composer[i], held.composer[j], strict=True)
    strata = np.array(["\x00".join(sorted((str(a), str(b)))) for a, b in pairs])
    out["conf_performer_pairs"] = float(y.size)
    out["conf_performer_same"] = float(y.sum())
    d = cosine_distance(held.emb[i], held.emb[j])
    within = StratifiedAUC(d, y, strata)
    auc = within() if y.any() else float("nan")
    if np.isfinite(auc):

        def stat(w: np.ndarray) -> float:
            return within(w[i] * w[j])

        lo, hi = bootstrap_interval(stat, held.group, s.resamples, s.seed)
        out.update(
            {"conf_performer_auc": auc, "conf_performer_auc_lo": lo, "conf_performer_auc_hi": hi}
        )
    return out


def pairs_protocol(val: Side, held: Side, s: Settings) -> tuple[dict[str, float], float]:
    """The original project's pair-set protocol (``metrics.pair_set_protocol``) on whole pieces:
    a pseudo-validation mixed pair set of the *validation* side picks the threshold; mixed /
    same / different pair sets of the held-out side report accuracy there (distinct pairs;
    same-composer pairs from different groups). Keys ``pairs_threshold``, ``pairs_acc_<set>``,
    ``pairs_n_<set>``; the threshold is also returned (nan without one)."""
    pseudo, sets = protocol_pair_sets(
        val.composer, val.group, held.composer, held.group, s.pairs, s.seed
    )
    scores = pair_set_protocol(val.emb, pseudo, held.emb, sets)
    scores.pop("acc_pseudo", None)
    out = {f"pairs_{k}": v for k, v in scores.items()}
    return out, out.get("pairs_threshold", float("nan"))


# report keys of earlier versions, as they read now (``current_keys``)
_RENAMED_PREFIXES = (
    ("seed_threshold", "pairs_threshold"),
    ("seed_acc_", "pairs_acc_"),
    ("seed_pairs_", "pairs_n_"),
)


def current_keys(metrics: dict[str, object]) -> dict[str, object]:
    """One method's metrics with the keys of earlier reports renamed to today's (``seed_threshold``
    → ``pairs_threshold``, ``seed_acc_*`` → ``pairs_acc_*``, ``seed_pairs_*`` → ``pairs_n_*``),
    so reports written before the rename read like new ones. A key present under both names
    keeps today's value."""
    out: dict[str, object] = {}
    for k, v in metrics.items():
        new = k
        for old, now in _RENAMED_PREFIXES:
            if k.startswith(old):
                new = now + k[len(old) :]
                break
        if new == k or new not in metrics:
            out[new] = v
    return out


def _centroids(side: Side, names: Sequence[str]) -> np.ndarray:
    return centroids(side.emb, side.composer, names)


def _attribution_metrics(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, prefix: str, s: Settings
) -> dict[str, float]:
    pred = scores.argmax(axis=1)
    correct = (pred == labels).astype(np.float64)
    lo, hi = bootstrap_interval(
        lambda w: float(np.sum(w * correct) / w.sum()) if w.sum() > 0 else np.nan,
        groups,
        s.resamples,
        s.seed,
    )
    out = {
        f"{prefix}_top1": topk_accuracy(scores, labels, 1),
        f"{prefix}_top1_lo": lo,
        f"{prefix}_top1_hi": hi,
        f"{prefix}_balanced_acc": balanced_accuracy(pred, labels),
        f"{prefix}_macro_f1": macro_f1(pred, labels),
    }
    for k in (3, 5):
        out[f"{prefix}_top{k}"] = topk_accuracy(scores, labels, min(k, scores.shape[1]))
    return out


def attribution(train: Side, val: Side, held: Side, s: Settings) -> dict[str, float]:
    """Composer centroids of the training side; top-1/3/5, balanced accuracy and macro-F1 on
    held-out pieces by composers seen in training. Also a logistic-regression probe on the
    embeddings whose C is chosen by validation top-1."""
    names = sorted(set(train.composer.tolist()))
    index = {n: k for k, n in enumerate(names)}
    seen = np.array([c in index for c in held.composer])
    out: dict[str, float] = {"attr_pieces": float(seen.sum()), "attr_composers": len(names)}
    if not seen.any():
        return out
    labels = np.array([index[c] for c in held.composer[seen]])
    groups = held.group[seen]
    cent = _centroids(train, names)
    out.update(_attribution_metrics(held.emb[seen] @ cent.T, labels, groups, "attr", s))
    out.update(_probe(train, val, held, seen, labels, names, s))
    return out


def class_probabilities(model, x: np.ndarray, n_classes: int) -> np.ndarray:
    """``(N, n_classes)`` probabilities of a fitted classifier, 0 for classes it never saw."""
    p = np.zeros((x.shape[0], n_classes))
    if x.shape[0]:
        p[:, model.classes_] = model.predict_proba(x)
    return p


def _probe(
    train: Side,
    val: Side,
    held: Side,
    seen: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    s: Settings,
) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    index = {n: k for k, n in enumerate(names)}
    y_train = np.array([index[c] for c in train.composer])
    vseen = np.array([c in index for c in val.composer])
    if len(np.unique(y_train)) < 2 or not vseen.any():
        return {}
    y_val = np.array([index[c] for c in val.composer[vseen]])

    def fit(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, max_iter=3000, random_state=s.seed).fit(train.emb, y_train)

    models = {c: fit(c) for c in PROBE_CS}  # each C fitted once, the chosen one reused

    def full(c: float, x: np.ndarray) -> np.ndarray:
        return class_probabilities(models[c], x, len(names))

    best = max(PROBE_CS, key=lambda c: np.mean(full(c, val.emb[vseen]).argmax(1) == y_val))
    out = _attribution_metrics(full(best, held.emb[seen]), labels, held.group[seen], "probe", s)
    out["probe_C"] = best
    return out


def retrieval(held: Side, s: Settings) -> dict[str, float]:
    """Each held-out piece queries the other held-out pieces of other groups: same-composer mAP
    and precision@k (interval: queries resampled by group). Same-work recall@1: for pieces whose
    work has another rendition, is the nearest other piece one of them?"""
    sim = held.emb @ held.emb.T
    other_group = held.group[:, None] != held.group[None, :]
    relevant = held.composer[:, None] == held.composer[None, :]
    aps, pks = retrieval_scores(sim, relevant, other_group, s.k)
    ok = np.isfinite(aps)
    out: dict[str, float] = {}
    if ok.any():
        lo, hi = bootstrap_interval(
            lambda w: float(np.sum(w[ok] * aps[ok]) / w[ok].sum()) if w[ok].sum() else np.nan,
            held.group,
            s.resamples,
            s.seed,
        )
        out.update({"retr_map": float(aps[ok].mean()), "retr_map_lo": lo, "retr_map_hi": hi})
        out[f"retr_p{s.k}"] = float(pks[ok].mean())
    n = len(held)
    not_self = ~np.eye(n, dtype=bool)
    same_work = (held.work[:, None] == held.work[None, :]) & not_self
    has = same_work.any(axis=1)
    out["retr_work_queries"] = float(has.sum())
    if has.any():
        masked = np.where(not_self, sim, -np.inf)
        nearest = masked.argmax(axis=1)
        out["retr_work_r1"] = float(np.mean(same_work[np.flatnonzero(has), nearest[has]]))
    return out


def evaluate_method(
    train: Side, val: Side, held: Side, s: Settings, scores: Side | None = None
) -> tuple[dict[str, float], Curves]:
    """Every protocol for one method's embeddings; ``scores``: held-out works' score MIDIs."""
    out, curves = verification(held, s)
    out.update(performer_control(held, s))
    pairs, thr = pairs_protocol(val, held, s)
    out.update(pairs)
    curves.threshold = thr
    out.update(attribution(train, val, held, s))
    out.update(retrieval(held, s))
    if scores is not None and len(scores) >= 2:
        sc, _ = verification(scores, s, prefix="conf_score")
        out.update(sc)
    return out, curves
