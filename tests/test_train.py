"""Training end to end on a cache of two synthetic composers: it learns, resumes, and DDP
keeps the ranks in step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from midi_factory import synthetic_corpus
from safetensors import safe_open
from tiny_runs import tiny_config

from harmonixr.data.cache import preprocess
from harmonixr.model import load_encoder
from harmonixr.model.io import weights_info
from harmonixr.train.config import TrainConfig
from harmonixr.train.run import last_checkpoint, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic_corpus(root / "midi", n_per=12, seconds=30)
    preprocess(root / "midi", root / "cache", workers=1)
    return root / "cache"


def _config(cache, out, **kw):
    # longer than the shared tiny run, with checkpoints to resume from
    longer = dict(
        steps_per_epoch=20, max_steps=60, warmup_steps=10, val_pairs=200, checkpoint_every_steps=10
    )
    return tiny_config(cache, out, **{**longer, **kw})


def test_tiny_model_learns_two_composers(cache, tmp_path):
    run = train(_config(cache, tmp_path / "run"))
    info = weights_info(run)
    assert info["metrics"]["val/auc"] > 0.9, info
    # learnt by the optimiser, not by the norm layers' statistics alone: the same run with a
    # learning rate of 1e-9 (weights unchanged, statistics updated) is the control
    control = train(_config(cache, tmp_path / "control", lr=1e-9))
    trained_gap, control_gap = composer_gap(run, cache), composer_gap(control, cache)
    assert trained_gap > control_gap + 0.5, (trained_gap, control_gap)  # measured 1.92 vs 0.21
    for name in ("config.json", "split.json", "model.safetensors"):
        assert (run / name).is_file()
    # the validation pieces land in TensorBoard's projector with their composers
    meta = list((run / "tb").rglob("metadata.tsv"))
    assert meta and "High" in meta[0].read_text() and "Low" in meta[0].read_text()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["d_model"] == 64 and cfg["train"]["max_steps"] == 60
    encoder = load_encoder(run)
    assert encoder.config.embed_dim == 32 and not encoder.training


class _Probe(L.Callback):
    def on_train_start(self, trainer, module):
        opt = trainer.optimizers[0]
        first = module.encoder.stem.weight
        self.step = trainer.global_step
        self.exp_avg = opt.state[first]["exp_avg"].clone()
        self.lr = opt.param_groups[0]["lr"]


def test_resume_continues_step_and_optimizer_state(cache, tmp_path):
    out = tmp_path / "run"
    train(_config(cache, out, max_steps=20, val_pairs=50))
    ckpt = last_checkpoint(out / "checkpoints")
    saved = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert saved["global_step"] == 20
    with pytest.raises(ValueError, match="already holds a run"):
        train(_config(cache, out, max_steps=40))
    probe = _Probe()
    train(_config(cache, out, max_steps=40, val_pairs=50), resume=True, callbacks=[probe])
    assert probe.step == 20
    # the optimiser state is the one saved (param 0 of group 0 is the stem's weight)
    torch.testing.assert_close(probe.exp_avg, saved["optimizer_states"][0]["state"][0]["exp_avg"])
    final = torch.load(last_checkpoint(out / "checkpoints"), weights_only=True)
    assert final["global_step"] == 40
    # a setting the run recorded but this version does not know is never dropped by a resume
    cfg = json.loads((out / "config.json").read_text())
    cfg["train"]["a_future_setting"] = 1
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="a_future_setting"):
        train(_config(cache, out, max_steps=50, val_pairs=50), resume=True)


def validation_embeddings(run: Path, cache: Path, initial: bool = False):
    """Whole-piece embeddings of the run's validation pieces, by its weights or by its
    untrained encoder, with their composers."""
    from harmonixr.data.cache import TensorCache
    from harmonixr.model.embed import embed_pieces
    from harmonixr.train.rundir import Run

    r = Run.open(run)
    with TensorCache(cache) as c:
        rows = c.pieces()
        val = [rows[i] for i in r.split(rows)["val"]]
        tensors = [c.load(row) for row in val]
    z = embed_pieces(r.encoder(initial=initial), tensors, r.crop_frames)
    return z, [row.composer for row in val]


def composer_gap(run: Path, cache: Path, initial: bool = False) -> float:
    """Mean cosine similarity of validation pieces by the same composer minus that of pieces
    by different composers."""
    z, composers = validation_embeddings(run, cache, initial)
    sim = z @ z.T
    same = np.array([[a == b for b in composers] for a in composers])
    off = ~np.eye(len(composers), dtype=bool)
    return float(sim[same & off].mean() - sim[~same].mean())


def test_supcon_loss_trains(cache, tmp_path):
    settings = dict(loss="supcon", max_steps=60, batch_size=8)
    run = train(_config(cache, tmp_path / "run", **settings))
    with safe_open(str(run / "model.safetensors"), framework="pt") as fh:
        assert "model_config" in fh.metadata()
    # it learnt: the untrained encoder already ranks these two composers apart (val AUC 1), and
    # training's norm layers update their statistics whatever the optimiser does, so the
    # control is the same run with a learning rate of 1e-9: measured on validation pieces, the
    # same-vs-different similarity gap is 1.61 trained against 0.21 for the control
    control = train(_config(cache, tmp_path / "control", **settings, lr=1e-9))
    trained_gap, control_gap = composer_gap(run, cache), composer_gap(control, cache)
    assert trained_gap > control_gap + 0.5, (trained_gap, control_gap)


def test_ddp_two_cpu_processes_stay_identical(cache, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "harmonixr.cli",
        "train",
        "--data",
        str(cache),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--max-steps",
        "4",
        "--steps-per-epoch",
        "4",
        "--batch-size",
        "4",
        "--crop-seconds",
        "5",
        "--devices",
        "2",
        "--accelerator",
        "cpu",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sync = json.loads((out / "ddp_sync.json").read_text())
    assert sync["world_size"] == 2 and sync["step"] == 4
    assert sync["max_abs_diff"] == 0.0


def test_time_stretch_follows_its_definition_and_velocity_gain_is_per_crop():
    from harmonixr.train.augment import time_stretch, velocity_gain

    x = torch.zeros(6, 1, 12, 6, 40)
    lengths = torch.tensor([40, 20, 10, 1, 40, 33])
    for k, n in enumerate(lengths.tolist()):
        x[k, 0, k % 12, 2, :n] = torch.linspace(0.1, 1.0, n)
    torch.manual_seed(7)
    f = torch.exp((torch.rand(6) * 2 - 1) * 0.3)  # the draw time_stretch makes
    torch.manual_seed(7)
    y, new = time_stretch(x, lengths, 0.3)
    assert y.shape == x.shape
    for k in range(6):
        n, fk = int(lengths[k]), float(f[k])
        want = min(40, max(1, round(n * fk)))  # played fk× slower: fk × as many frames
        assert int(new[k]) == want, (k, fk)
        for t in range(40):
            src = min(int(t / fk), n - 1)  # frame t shows what sounded at t / fk
            expect = x[k, ..., src] if t < want else torch.zeros_like(x[k, ..., 0])
            assert torch.equal(y[k, ..., t], expect), (k, t)
    same, n_same = time_stretch(x, lengths, 0.0)
    assert torch.equal(same, x) and torch.equal(n_same, lengths)  # a = 0: identity
    g = velocity_gain(torch.full((200, 1, 2, 2, 3), 0.5), 0.4)
    per_crop = g.flatten(1)
    assert torch.equal(per_crop.min(1).values, per_crop.max(1).values)  # one gain per crop
    assert per_crop.min() > 0.5 * 0.67 - 1e-3 and per_crop.max() < 0.5 * 1.50
    assert per_crop.std() > 0.05  # gains do vary between crops


def test_ema_starts_late_and_exports_the_average(cache, tmp_path):
    from safetensors.torch import load_file

    from harmonixr.train.run import late_ema

    common = dict(loss="supcon", max_steps=6, steps_per_epoch=3, velocity_gain=0.4)
    runs = {
        ema: train(_config(cache, tmp_path / f"run{ema}", ema=ema, time_stretch=0.2, **common))
        for ema in (0.0, 0.5)
    }
    assert weights_info(runs[0.5])["step"] == 6  # the last weights, not the best validation's
    plain, averaged = (load_file(str(runs[e] / "model.safetensors")) for e in (0.0, 0.5))
    assert any(not torch.equal(plain[k], averaged[k]) for k in plain)  # the average is exported
    cb = late_ema(0.9, start_step=3)
    assert not cb.should_update(step_idx=2) and cb.should_update(step_idx=3)


def test_humanise_shifts_and_scales_each_key_by_its_own_draw():
    import numpy as np

    from harmonixr.train.augment import humanise, velocity_curve

    torch.manual_seed(3)
    x = torch.zeros(4, 1, 12, 6, 40)
    x[..., 10:12] = 0.5  # every key sounds at frames 10 and 11
    torch.manual_seed(7)
    y = humanise(x, jitter=2, gain=0.0)
    torch.manual_seed(7)
    shift = torch.randint(-2, 3, (4, 1, 12, 6, 1))  # the draw humanise makes
    for b, p, o in [(0, 0, 0), (1, 5, 3), (3, 11, 5), (2, 7, 1)]:
        s = int(shift[b, 0, p, o, 0])
        want = torch.zeros(40)
        want[10 + s : 12 + s] = 0.5
        assert torch.equal(y[b, 0, p, o], want), (b, p, o, s)
    assert len({int(v) for v in shift.flatten()}) > 1  # keys move independently
    # gain: each key scaled by one factor within [e^-a, e^a]; silence stays silent
    z = humanise(x, jitter=0, gain=0.4)
    ratio = z[..., 10] / x[..., 10]
    assert torch.equal(z[..., 10], z[..., 11]) and float(z[..., :10].abs().sum()) == 0
    assert ratio.min() >= np.exp(-0.4) - 1e-6 and ratio.max() <= np.exp(0.4) + 1e-6
    assert ratio.std() > 0
    # edges: a key shifted past the crop's end loses those frames, nothing wraps round
    edge = torch.zeros(1, 1, 12, 6, 5)
    edge[..., 0] = 1.0
    torch.manual_seed(0)
    e = humanise(edge, jitter=1, gain=0.0)
    assert float(e[..., 4].sum()) == 0 and float(e.sum()) <= 72
    # velocity curve: v → v^γ per crop, one γ for all its cells, silence untouched
    v = torch.full((3, 1, 12, 6, 4), 0.25)
    v[..., 0] = 0.0
    w = velocity_curve(v, 0.5)
    g = torch.log(w[:, 0, 0, 0, 1]) / np.log(0.25)
    assert torch.allclose(
        torch.log(w[..., 1:]) / np.log(0.25), g.view(3, 1, 1, 1, 1).expand(3, 1, 12, 6, 3)
    )
    assert float(w[..., 0].abs().sum()) == 0
    assert float(g.min()) >= np.exp(-0.5) - 1e-5 and float(g.max()) <= np.exp(0.5) + 1e-5


def test_validation_is_the_pairs_protocol_on_one_minus_cosine():
    import numpy as np

    from harmonixr.data.pairs import PieceSet, protocol_pair_sets
    from harmonixr.evaluate.metrics import best_threshold
    from harmonixr.train.module import ValData, validation_metrics

    rng = np.random.default_rng(0)
    comp = np.repeat(np.arange(3), 10)
    groups = np.arange(30) // 2
    emb = rng.normal(size=(30, 6)) + 2.0 * np.eye(6)[comp]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    pieces = PieceSet([np.zeros(1)] * 30, comp, groups, ["a", "b", "c"], [""] * 30)
    pseudo, sets = protocol_pair_sets(comp, groups, comp, groups, 40, 0)
    m = validation_metrics(emb, ValData(pieces, pseudo, sets), 1.0)

    def cos_d(ps):
        return np.array([1.0 - emb[a] @ emb[b] for a, b in zip(ps.i, ps.j, strict=True)])

    thr, acc = best_threshold(cos_d(pseudo), pseudo.y)
    assert m["threshold"] == pytest.approx(thr) and m["acc_pseudo"] == pytest.approx(acc)
    for ps in sets:
        assert m[f"acc_{ps.name}"] == pytest.approx(np.mean((cos_d(ps) < thr) == (ps.y > 0)))
    assert not any(k.startswith("n_") for k in m)
    # the static-margin loss stays on the loss's own (Euclidean) distance
    mixed = sets[0]
    e = np.linalg.norm(emb[mixed.i] - emb[mixed.j], axis=1)
    want = np.mean(mixed.y * e**2 + (1 - mixed.y) * np.maximum(0.0, 1.0 - e) ** 2)
    assert m["loss_static"] == pytest.approx(want, rel=1e-5)


def test_augment_applies_exactly_the_configured_augmentations():
    from harmonixr.train.augment import augment, humanise, time_stretch, velocity_gain

    x = torch.rand(3, 1, 12, 6, 20)
    lengths = torch.tensor([20, 15, 9])
    none = TrainConfig(noise_sigma=0.0)
    same, n = augment(x.clone(), lengths, none)
    assert torch.equal(same, x) and torch.equal(n, lengths)
    cfg = TrainConfig(noise_sigma=0.0, time_stretch=0.2, velocity_gain=0.3, onset_jitter=1)
    torch.manual_seed(5)
    got, got_n = augment(x.clone(), lengths, cfg)
    torch.manual_seed(5)
    want, want_n = time_stretch(x.clone(), lengths, 0.2)
    want = humanise(velocity_gain(want, 0.3), 1, 0.0)
    assert torch.equal(got, want) and torch.equal(got_n, want_n)
