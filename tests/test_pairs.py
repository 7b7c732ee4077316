"""Pairs, crops, samplers and splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from harmonixr.data.pairs import (
    ComposerBatchDataset,
    PairDataset,
    PieceSet,
    StepSampler,
    centre_crop,
    make_pair_set,
    pair_set_seed,
    protocol_pair_sets,
    random_crop,
)
from harmonixr.data.splits import load_split, make_split, save_split
from harmonixr.evaluate.metrics import shared_positive_rate
from harmonixr.model.embed import to_model_input
from harmonixr.train.augment import multiplicative_noise


def _pieces(n_comp=4, per=12, works_per=4, frames=100):
    rng = np.random.default_rng(0)
    tensors, comps, groups = [], [], []
    for c in range(n_comp):
        for i in range(per):
            tensors.append(rng.integers(0, 128, (frames + i, 12, 6), dtype=np.uint8))
            comps.append(c)
            groups.append(c * 100 + i % works_per)
    return PieceSet(
        tensors,
        np.array(comps),
        np.array(groups),
        [f"C{c}" for c in range(n_comp)],
        [f"p{i}" for i in range(len(tensors))],
    )


def test_positive_partner_never_shares_the_group_and_half_are_positive():
    ps = _pieces()
    ds = PairDataset(ps, crop=50, seed=1)
    ys = []
    for k in range(2000):
        i, j, y, _ = ds.pair(k)
        ys.append(y)
        if y == 1.0:
            assert ps.composers[i] == ps.composers[j] and ps.groups[i] != ps.groups[j]
        else:
            assert ps.composers[i] != ps.composers[j]
    assert abs(np.mean(ys) - 0.5) < 0.04
    item = ds[7]
    assert item["x1"].shape == (50, 12, 6) and item["x1"].dtype == torch.uint8
    again = ds[7]
    assert torch.equal(item["x1"], again["x1"]) and item["y"] == again["y"]  # seeded by index


def test_balanced_sampling_evens_out_composers():
    ps = _pieces()
    keep = np.flatnonzero((ps.composers != 0) | (np.arange(len(ps.composers)) < 2))
    small = PieceSet(
        [ps.tensors[i] for i in keep],
        ps.composers[keep],
        ps.groups[keep],
        ps.composer_names,
        [ps.paths[i] for i in keep],
    )
    counts = np.bincount(
        [small.composers[PairDataset(small, 10, 0, balanced=True).pair(k)[0]] for k in range(2000)],
        minlength=4,
    )
    assert counts.min() > 400  # composer 0 has 2 of 38 pieces yet ~1/4 of anchors


def test_crops_pad_and_report_true_length():
    rng = np.random.default_rng(0)
    arr = np.arange(30 * 72, dtype=np.uint8).reshape(30, 12, 6) % 100
    out, n = random_crop(arr, 50, rng)
    assert n == 30 and not out[30:].any() and np.array_equal(out[:30], arr)
    out, n = random_crop(arr, 10, rng)
    assert n == 10 and any(np.array_equal(out, arr[s : s + 10]) for s in range(21))
    out, n = centre_crop(arr, 10)
    assert np.array_equal(out, arr[10:20])


def test_model_input_and_noise():
    x = torch.zeros(2, 5, 12, 6, dtype=torch.uint8)
    x[0, 1, 3, 2] = 127
    f = to_model_input(x)
    assert f.shape == (2, 1, 12, 6, 5) and f[0, 0, 3, 2, 1] == 1.0
    noisy = multiplicative_noise(f.clone(), 0.5, torch.Generator().manual_seed(0))
    assert noisy[f == 0].abs().max() == 0 and noisy.min() >= 0 and noisy.max() <= 1


def test_composer_batches_are_p_by_k():
    ds = ComposerBatchDataset(_pieces(), crop=20, p=3, k=4, seed=0)
    b = ds[0]
    assert b["x"].shape == (12, 20, 12, 6)
    assert sorted(np.bincount(b["label"].numpy(), minlength=4).tolist()) == [0, 4, 4, 4]


def _uneven_works():
    """Composers with 1, 2, 3, 4 and 6 works, three performances of each work."""
    tensors, comps, groups = [], [], []
    for c, works in enumerate((1, 2, 3, 4, 6)):
        for w in range(works):
            for _ in range(3):
                tensors.append(np.zeros((30, 12, 6), np.uint8))
                comps.append(c)
                groups.append(c * 100 + w)
    return PieceSet(tensors, np.array(comps), np.array(groups), [f"C{c}" for c in range(5)], [])


def test_supcon_positives_never_share_a_work():
    ps = _uneven_works()
    ds = ComposerBatchDataset(ps, crop=10, p=3, k=4, seed=0)
    crops = np.zeros(5)
    for b in range(200):
        picks, labels = ds.indices(b)
        assert len(picks) == 12  # the batch is always full
        labels_t, groups_t = torch.tensor(labels), torch.from_numpy(ps.groups[picks])
        assert shared_positive_rate(labels_t, groups_t) == 0.0
        per = np.bincount(labels, minlength=5)
        assert per[0] <= 1 and per[1] <= 2 and per[2] <= 3 and per.max() <= 4
        crops += per
    # drawn in proportion to the works each can offer: weights 1, 2, 3, 4, 4
    share = crops / crops.sum()
    assert share[0] < share[1] < share[2] < share[3]
    assert abs(share[3] - share[4]) < 0.05
    item = ds[3]
    assert item["x"].shape == (12, 10, 12, 6)
    assert torch.equal(item["group"], torch.from_numpy(ps.groups[ds.indices(3)[0]]))
    assert "1 with a single work" in ds.summary()


def test_shared_positive_rate_counts_positive_pairs_within_a_work():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    groups = torch.tensor([5, 5, 6, 7, 8, 9])
    # positives: (0,1) same work, (0,2), (1,2), (3,4): one of four
    assert shared_positive_rate(labels, groups) == 0.25
    assert np.isnan(shared_positive_rate(torch.tensor([0, 1]), torch.tensor([0, 0])))


def test_step_sampler_gives_each_rank_and_epoch_new_items():
    a, b = StepSampler(8, 0, 2), StepSampler(8, 1, 2)
    assert list(a) == [0, 2, 4, 6] and list(b) == [1, 3, 5, 7]
    a.set_epoch(1)
    assert list(a) == [8, 10, 12, 14]


def test_pair_sets():
    ps = _pieces()
    mixed = make_pair_set(ps.composers, ps.groups, 100, "mixed", 0)
    assert len(mixed) == 100 and mixed.y.sum() == 50
    same = make_pair_set(ps.composers, ps.groups, 50, "same", 0)
    assert (ps.composers[same.i] == ps.composers[same.j]).all()
    assert (ps.groups[same.i] != ps.groups[same.j]).all()
    diff = make_pair_set(ps.composers, ps.groups, 50, "different", 0)
    assert (ps.composers[diff.i] != ps.composers[diff.j]).all() and diff.y.sum() == 0
    with pytest.raises(ValueError):
        make_pair_set(ps.composers, ps.groups, 5, "weird", 0)


@dataclass
class P:
    path: str
    composer: str
    group: str


def _labelled():
    out = []
    for c in range(5):
        for w in range(3 + 2 * c):
            for r in range(1 + w % 3):  # several renditions per work
                out.append(P(f"{c}/{w}/{r}.mid", f"C{c}", f"C{c}-w{w}"))
    return out


def test_group_split_never_straddles_and_is_seeded(tmp_path):
    pieces = _labelled()
    split = make_split(pieces, "group", seed=3)
    sides = {}
    for side, idx in split.items():
        for i in idx:
            assert sides.setdefault(pieces[i].group, side) == side
    assert sorted(i for idx in split.values() for i in idx) == list(range(len(pieces)))
    assert split == make_split(pieces, "group", seed=3)
    assert split != make_split(pieces, "group", seed=4)
    val_composers = {pieces[i].composer for i in split["val"]}
    assert val_composers == {"C0", "C1", "C2", "C3", "C4"}  # stratified: every composer
    save_split(tmp_path / "split.json", pieces, split, mode="group")
    assert load_split(tmp_path / "split.json", pieces) == split


def test_unseen_composer_split():
    pieces = _labelled()
    split = make_split(pieces, "unseen-composer", fractions=(0.6, 0.2, 0.2), seed=0)
    comp = {s: {pieces[i].composer for i in idx} for s, idx in split.items()}
    assert len(comp["val"]) == 1 and len(comp["test"]) == 1
    assert not (comp["train"] & comp["val"]) and not (comp["train"] & comp["test"])


def test_each_pair_set_draws_from_its_own_seed_and_name_stream():
    import zlib

    ps = _pieces()
    c, g = ps.composers, ps.groups
    a = make_pair_set(c, g, 40, "mixed", 7, "pseudo")
    again = make_pair_set(c, g, 40, "mixed", 7, "pseudo")
    assert (a.i == again.i).all() and (a.j == again.j).all()
    b = make_pair_set(c, g, 40, "mixed", 7, "mixed")  # same kind, other name: other pairs
    assert set(zip(a.i, a.j, strict=True)) != set(zip(b.i, b.j, strict=True))
    other_seed = make_pair_set(c, g, 40, "mixed", 8, "pseudo")
    assert set(zip(a.i, a.j, strict=True)) != set(zip(other_seed.i, other_seed.j, strict=True))
    # the documented stream: SeedSequence([seed, crc32(name)])
    seq = np.random.SeedSequence([7, zlib.crc32(b"pseudo")])
    assert (pair_set_seed(7, "pseudo").generate_state(4) == seq.generate_state(4)).all()
    # the protocol's sets: each its own (seed, name) stream, whatever else is drawn
    pseudo, sets = protocol_pair_sets(c, g, c, g, 40, 7)
    assert (pseudo.i == a.i).all() and pseudo.name == "pseudo"
    assert [s.name for s in sets] == ["mixed", "same", "different"]
    assert (sets[0].i == b.i).all() and (sets[0].j == b.j).all()
    alone = make_pair_set(c, g, 40, "different", 7)
    assert (sets[2].i == alone.i).all() and (sets[2].j == alone.j).all()
