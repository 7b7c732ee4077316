"""The composer-style test: Mantel correlation and its permutation p-value."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harmonixr.evaluate.style import ERAS, composer_table, mantel, style_test


def test_table_is_complete_and_plausible():
    table = composer_table()
    assert len(table) >= 30
    for c in table.values():
        assert 1500 < c.born < 1950 and c.era in ERAS and c.source
    assert table["Bach"].born == 1685 and table["Chopin"].era == "Romantic"


def test_mantel_finds_a_planted_order_and_not_noise():
    rng = np.random.default_rng(1)
    x = np.sort(rng.uniform(0, 100, 12))
    d = np.abs(x[:, None] - x[None, :])
    rho, p = mantel(d, d + 0.0, permutations=499, seed=0)
    assert rho == pytest.approx(1.0) and p <= 2 / 500
    # unrelated matrices: the p-value is uniform, so about 1 in 20 falls below 0.05
    small = 0
    for k in range(40):
        noise = np.random.default_rng(100 + k).uniform(size=(12, 12))
        small += mantel(noise + noise.T, d, permutations=99, seed=k)[1] < 0.05
    assert small <= 6
    with pytest.raises(ValueError, match="at least 4"):
        mantel(d[:3, :3], d[:3, :3])


def test_style_test_on_centroids_ordered_by_birth():
    table = composer_table()
    names = sorted(table, key=lambda n: table[n].born)
    angle = np.array([table[n].born for n in names], float) / 400.0  # later → further round
    cent = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    out = style_test(cent, [*names, "Nobody"], permutations=199)
    assert out["composers"] == names  # composers outside the table are left out
    assert out["birth_year"]["spearman"] > 0.95 and out["birth_year"]["p"] <= 0.01
    assert out["era"]["spearman"] > 0.5


def test_composer_style_uses_dated_composers_with_enough_pieces(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import harmonixr.search.index as index_module
    from harmonixr.viz.eras import composer_style

    table = composer_table()
    known = ["Bach", "Mozart", "Chopin", "Debussy", "Bartok", "Nobody", "Haydn"]
    angle = np.array([table[n].born if n in table else 1700 for n in known], float) / 300
    fake = SimpleNamespace(
        known=known,
        centroids=np.stack([np.cos(angle), np.sin(angle), np.zeros(7)], axis=1),
        manifest={"train_pieces": {n: 5 for n in known} | {"Haydn": 1}},
    )
    monkeypatch.setattr(index_module.Index, "load", staticmethod(lambda _root: fake))
    res = composer_style(tmp_path / "index", tmp_path / "out", min_pieces=3, permutations=99)
    # Nobody has no date, Haydn too few training pieces
    assert res["composers"] == ["Bach", "Mozart", "Chopin", "Debussy", "Bartok"]
    assert res["birth_year"]["spearman"] > 0.9
    assert (tmp_path / "out" / "composers-eras.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "out" / "style.json").read_text())["permutations"] == 99
    fake.manifest = {"train_pieces": {}}
    with pytest.raises(ValueError, match="composers with a date"):
        composer_style(tmp_path / "index", tmp_path / "out")
