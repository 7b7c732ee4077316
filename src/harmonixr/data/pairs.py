"""Training pairs, crops and validation pair sets over cached tensors (docs/architecture.md)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from harmonixr.data.cache import CachedPiece, TensorCache


class LazyTensors(Sequence[np.ndarray]):
    """Cached tensors opened memory-mapped on first use; pickles as paths only, so
    data-loader workers and DDP ranks share the page cache instead of copies."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self._open: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        arr = self._open.get(i)
        if arr is None:
            arr = self._open[i] = np.load(self.paths[i], mmap_mode="r")
        return arr

    def __getstate__(self) -> dict[str, object]:
        return {"paths": self.paths, "_open": {}}


@dataclass
class PieceSet:
    """Tensors (memory-mapped) with integer composer and group labels."""

    tensors: Sequence[np.ndarray]
    composers: np.ndarray  # int label per piece
    groups: np.ndarray  # int id per piece
    composer_names: list[str]
    paths: list[str]

    @classmethod
    def from_cache(
        cls, cache: TensorCache, rows: Sequence[CachedPiece], composer_names: Sequence[str]
    ) -> PieceSet:
        names = list(composer_names)
        label = {c: i for i, c in enumerate(names)}
        group_ids: dict[str, int] = {}
        return cls(
            tensors=LazyTensors([str(cache.tensor_file(r)) for r in rows]),
            composers=np.array([label[r.composer] for r in rows], np.int64),
            groups=np.array(
                [group_ids.setdefault(r.group, len(group_ids)) for r in rows], np.int64
            ),
            composer_names=names,
            paths=[r.path for r in rows],
        )

    def __len__(self) -> int:
        return len(self.tensors)


def _window(arr: np.ndarray, start: int, length: int) -> tuple[np.ndarray, int]:
    """``length`` frames from ``start``, zero-padded past the end; and the true length."""
    out = np.zeros((length, *arr.shape[1:]), np.uint8)
    part = arr[start : start + length]
    out[: part.shape[0]] = part
    return out, max(part.shape[0], 1)


def random_crop(arr: np.ndarray, length: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A random window of ``length`` frames (zero-padded when the piece is shorter)."""
    spare = arr.shape[0] - length
    return _window(arr, int(rng.integers(0, spare + 1)) if spare > 0 else 0, length)


def centre_crop(arr: np.ndarray, length: int) -> tuple[np.ndarray, int]:
    return _window(arr, max(0, (arr.shape[0] - length) // 2), length)


class _Chooser:
    """Random choices of anchors and partners, optionally composer-balanced."""

    def __init__(self, pieces: PieceSet, balanced: bool) -> None:
        self.pieces = pieces
        self.balanced = balanced
        self.by_composer = {
            int(c): np.flatnonzero(pieces.composers == c) for c in np.unique(pieces.composers)
        }
        self.composers = np.array(sorted(self.by_composer))
        if len(self.composers) < 2:
            raise ValueError("training needs pieces by at least two composers")

    def anchor(self, rng: np.random.Generator) -> int:
        if self.balanced:
            c = int(rng.choice(self.composers))
            return int(rng.choice(self.by_composer[c]))
        return int(rng.integers(len(self.pieces)))

    def same(self, i: int, rng: np.random.Generator) -> int | None:
        """Another piece by i's composer from a different work, or None."""
        cands = self.by_composer[int(self.pieces.composers[i])]
        cands = cands[self.pieces.groups[cands] != self.pieces.groups[i]]
        return int(rng.choice(cands)) if cands.size else None

    def other(self, i: int, rng: np.random.Generator) -> int:
        c = int(self.pieces.composers[i])
        if self.balanced:
            others = self.composers[self.composers != c]
            return int(rng.choice(self.by_composer[int(rng.choice(others))]))
        cands = np.flatnonzero(self.pieces.composers != c)
        return int(rng.choice(cands))


class PairDataset(Dataset):
    """Item k: an anchor crop and a partner crop, ``y = 1`` for the same composer.

    Half the time (``p_same``) the partner is by the anchor's composer from a *different* work;
    otherwise by another composer. Every item is drawn from its own generator seeded by
    ``(seed, k)``, so runs are reproducible whatever the worker count.
    """

    def __init__(
        self,
        pieces: PieceSet,
        crop: int,
        seed: int = 0,
        balanced: bool = False,
        p_same: float = 0.5,
    ) -> None:
        self.pieces, self.crop, self.seed, self.p_same = pieces, crop, seed, p_same
        self.chooser = _Chooser(pieces, balanced)

    def __len__(self) -> int:
        return 2**62

    def pair(self, k: int) -> tuple[int, int, float, np.random.Generator]:
        rng = np.random.default_rng([self.seed, k])
        i = self.chooser.anchor(rng)
        j = self.chooser.same(i, rng) if rng.random() < self.p_same else None
        if j is None:
            return i, self.chooser.other(i, rng), 0.0, rng
        return i, j, 1.0, rng

    def __getitem__(self, k: int) -> dict[str, object]:
        i, j, y, rng = self.pair(k)
        x1, n1 = random_crop(self.pieces.tensors[i], self.crop, rng)
        x2, n2 = random_crop(self.pieces.tensors[j], self.crop, rng)
        return {
            "x1": torch.from_numpy(x1),
            "len1": n1,
            "x2": torch.from_numpy(x2),
            "len2": n2,
            "y": y,
        }


class ComposerBatchDataset(Dataset):
    """Item k: a whole batch of ``P × K`` crops for the supervised contrastive loss, in which
    the crops of one composer always come from different groups (works), so that no positive
    pair is two moments of one work. Use with ``DataLoader(batch_size=None)``.

    A composer with fewer than ``K`` works cannot give ``K`` crops from distinct works: it gives
    one crop per work, and composers are drawn (without replacement, until the batch is full)
    with weight ``min(works, K)``, so each is sampled in proportion to the distinct works it
    can offer. A composer with a single work therefore appears as a single crop: a negative for
    the others, never a positive anchor (which needs two works). Every batch carries the
    crops' ``group`` so that :func:`shared_positive_rate` can report how often positives share
    a work (0 by construction).
    """

    def __init__(self, pieces: PieceSet, crop: int, p: int, k: int, seed: int = 0) -> None:
        if k < 2:
            raise ValueError(f"supcon needs at least 2 crops per composer, got K = {k}")
        self.pieces, self.crop, self.k, self.seed = pieces, crop, k, seed
        self.chooser = _Chooser(pieces, balanced=True)
        self.composers = self.chooser.composers
        self.p = min(p, len(self.composers))
        self.works = np.array(
            [
                np.unique(pieces.groups[self.chooser.by_composer[int(c)]]).size
                for c in self.composers
            ]
        )
        self.weights = np.minimum(self.works, k).astype(np.float64)
        self.batch_size = min(self.p * k, int(self.weights.sum()))

    def __len__(self) -> int:
        return 2**62

    def summary(self) -> str:
        """One line on what the batches can hold (printed at the start of training)."""
        few = int((self.works < self.k).sum())
        single = int((self.works == 1).sum())
        text = (
            f"supcon batches of {self.batch_size} crops: {self.p} composers × {self.k} crops, "
            "each composer's crops from distinct works"
        )
        if few:
            text += (
                f"; {few} of {len(self.composers)} composers have fewer than {self.k} works "
                f"(drawn in proportion, one crop per work)"
            )
        if single:
            text += f", {single} with a single work (negatives only)"
        return text

    def indices(self, k: int) -> tuple[list[int], list[int]]:
        """Batch ``k`` as (piece indices, composer labels)."""
        rng = np.random.default_rng([self.seed, k])
        order = rng.choice(
            self.composers,
            size=self.composers.size,
            replace=False,
            p=self.weights / self.weights.sum(),
        )
        picks: list[int] = []
        labels: list[int] = []
        for c in order:
            room = self.batch_size - len(picks)
            if room <= 0:
                break
            members = rng.permutation(self.chooser.by_composer[int(c)])
            # one piece per work, works in random order (the first piece met of each)
            _, first = np.unique(self.pieces.groups[members], return_index=True)
            one_per_work = members[np.sort(first)]
            take = one_per_work[: min(self.k, room)]
            picks += [int(i) for i in take]
            labels += [int(c)] * take.size
        return picks, labels

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        picks, labels = self.indices(k)
        rng = np.random.default_rng([self.seed, k, 1])
        xs, lens = [], []
        for i in picks:
            x, n = random_crop(self.pieces.tensors[i], self.crop, rng)
            xs.append(x)
            lens.append(n)
        return {
            "x": torch.from_numpy(np.stack(xs)),
            "len": torch.tensor(lens),
            "label": torch.tensor(labels),
            "group": torch.from_numpy(self.pieces.groups[picks]),
        }


class StepSampler(Sampler[int]):
    """Indices ``epoch·n + rank, epoch·n + rank + world, …``: distinct items per epoch and per
    rank, so each epoch and each DDP rank sees new, reproducible pairs."""

    def __init__(self, n: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.rank, self.world, self.epoch = n, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * self.n
        return iter(range(base + self.rank, base + self.n, self.world))


@dataclass(frozen=True)
class PairSet:
    """A fixed set of validation pairs: indices into a piece list and labels (1 = same)."""

    name: str
    i: np.ndarray
    j: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.size)


def pair_set_seed(seed: int, name: str) -> np.random.SeedSequence:
    """The random stream of the pair set called ``name`` under the random ``seed``:
    ``SeedSequence([seed, crc32(name)])`` (CRC-32 of the UTF-8 name, stable across runs and
    machines). Each named set has its own stream, so no set's draw depends on another's and no
    seed offsets are needed."""
    return np.random.SeedSequence([int(seed), zlib.crc32(name.encode("utf-8"))])


def make_pair_set(
    composers: np.ndarray, groups: np.ndarray, n: int, kind: str, seed: int, name: str = ""
) -> PairSet:
    """``kind``: ``mixed`` (half same), ``same`` or ``different``. Same-composer pairs always
    come from different works. Pairs are distinct: when fewer than asked exist, the set holds
    all of them (so it can be smaller than ``n``). The set is called ``name`` (default: its
    kind) and drawn from the stream :func:`pair_set_seed` gives ``(seed, name)``."""
    rng = np.random.default_rng(pair_set_seed(seed, name or kind))
    composers, groups = np.asarray(composers), np.asarray(groups)
    m = composers.size
    ii, jj = np.triu_indices(m, k=1)
    same = (composers[ii] == composers[jj]) & (groups[ii] != groups[jj])
    diff = composers[ii] != composers[jj]
    pools = {"same": np.flatnonzero(same), "different": np.flatnonzero(diff)}
    if kind == "mixed":
        want = {"same": n // 2, "different": n - n // 2}
    elif kind in pools:
        want = {kind: n}
    else:
        raise ValueError(f"pair set kind must be mixed, same or different, got {kind!r}")
    chosen, labels = [], []
    for k, count in want.items():
        pool = pools[k]
        if pool.size == 0 or count == 0:
            continue
        take = rng.choice(pool, size=min(count, pool.size), replace=False)
        chosen.append(take)
        labels.append(np.full(take.size, 1 if k == "same" else 0))
    if not chosen:
        return PairSet(name or kind, np.zeros(0, int), np.zeros(0, int), np.zeros(0, int))
    sel = np.concatenate(chosen)
    return PairSet(name or kind, ii[sel], jj[sel], np.concatenate(labels))


PAIR_SET_KINDS = ("mixed", "same", "different")


def protocol_pair_sets(
    choose_composers: np.ndarray,
    choose_groups: np.ndarray,
    composers: np.ndarray,
    groups: np.ndarray,
    n: int,
    seed: int,
) -> tuple[PairSet, list[PairSet]]:
    """The pair sets of the original project's protocol (``evaluate.metrics.pair_set_protocol``):
    a mixed set named ``pseudo`` over the pieces that choose the threshold, and sets named
    ``mixed``, ``same`` and ``different`` (their kinds) over the measured pieces, ``n`` pairs
    each, every one from its own ``(seed, name)`` stream. Training's validation passes its
    validation pieces as both; the evaluation the validation side, then the held-out side."""
    pseudo = make_pair_set(choose_composers, choose_groups, n, "mixed", seed, "pseudo")
    sets = [make_pair_set(composers, groups, n, kind, seed, kind) for kind in PAIR_SET_KINDS]
    return pseudo, sets
