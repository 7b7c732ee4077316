"""Training end to end on a cache of two synthetic composers: it learns, resumes, and DDP
keeps the ranks in step."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from midi_factory import synthetic_corpus
from safetensors import safe_open

from harmonixr.data.cache import preprocess
from harmonixr.model import load
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
    base = dict(
        loss="contrastive",
        data=str(cache),
        out=str(out),
        preset="tiny",
        crop_seconds=10,
        batch_size=8,
        steps_per_epoch=20,
        max_steps=60,
        warmup_steps=10,
        lr=2e-3,
        val_pairs=200,
        split_fractions=(0.5, 0.25, 0.25),
        checkpoint_every_steps=10,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_model_learns_two_composers(cache, tmp_path):
    run = train(_config(cache, tmp_path / "run"))
    info = weights_info(run)
    assert info["metrics"]["val/auc"] > 0.9, info
    for name in ("config.json", "split.json", "model.safetensors"):
        assert (run / name).is_file()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["d_model"] == 64 and cfg["train"]["max_steps"] == 60
    encoder = load(run)
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


def test_supcon_loss_trains(cache, tmp_path):
    run = train(_config(cache, tmp_path / "run", loss="supcon", max_steps=20, batch_size=8))
    with safe_open(str(run / "model.safetensors"), framework="pt") as fh:
        assert "model_config" in fh.metadata()


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


def test_time_stretch_keeps_music_in_the_valid_frames_and_lengths_follow():
    import torch

    from harmonixr.train.module import time_stretch, velocity_gain

    torch.manual_seed(0)
    x = torch.zeros(6, 1, 12, 6, 40)
    lengths = torch.tensor([40, 20, 10, 1, 40, 33])
    for k, n in enumerate(lengths.tolist()):
        x[k, 0, k % 12, 2, :n] = torch.linspace(0.1, 1.0, n)
    y, new = time_stretch(x, lengths, 0.3)
    assert y.shape == x.shape
    assert ((new >= 1) & (new <= 40)).all()
    for k in range(6):
        m = int(new[k])
        assert (y[k, ..., m:] == 0).all()  # nothing past the new length
        row = y[k, 0, k % 12, 2, :m]
        assert (row > 0).all() and (torch.diff(row) >= 0).all()  # order kept, no gaps
        assert abs(m - round(int(lengths[k]) * (m / int(lengths[k])))) <= 1
    same, n_same = time_stretch(x, lengths, 0.0)
    assert torch.equal(same, x) and torch.equal(n_same, lengths)  # a = 0: identity
    g = velocity_gain(torch.full((200, 1, 2, 2, 3), 0.5), 0.4)
    per_crop = g.flatten(1)
    assert torch.equal(per_crop.min(1).values, per_crop.max(1).values)  # one gain per crop
    assert per_crop.min() > 0.5 * 0.67 - 1e-3 and per_crop.max() < 0.5 * 1.50


def test_ema_and_augmented_training_runs_and_exports_last(cache, tmp_path):
    cfg = _config(
        cache,
        tmp_path / "run",
        loss="supcon",
        max_steps=6,
        steps_per_epoch=3,
        velocity_gain=0.4,
        time_stretch=0.2,
        ema=0.9,
    )
    run = train(cfg)
    assert weights_info(run)["step"] == 6  # the last weights, not the best validation's


def _hx(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harmonixr.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_resume_keeps_the_recorded_settings_and_prunes_checkpoints(cache, tmp_path):
    out = tmp_path / "run"
    toml = tmp_path / "every_step.toml"
    toml.write_text("[train]\ncheckpoint_every_steps = 1\nwarmup_steps = 1\n")
    first = _hx(
        "train", "--data", str(cache), "--out", str(out), "--preset", "tiny",
        "--loss", "contrastive", "--crop-seconds", "5", "--batch-size", "4",
        "--max-steps", "4", "--steps-per-epoch", "2", "--config", str(toml),
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    # Lightning's own noise is gone; our warning (the default split leaves validation one
    # piece per composer) still shows
    for noise in ("litlogger", "LeafSpec", "💡"):
        assert noise not in first.stderr + first.stdout
    assert "holds no two pieces by one composer" in first.stderr
    again = _hx("train", "--data", str(cache), "--out", str(out), "--resume", "--max-steps", "6")
    assert again.returncode == 0, again.stderr[-3000:]
    recorded = json.loads((out / "config.json").read_text())["train"]
    want = {"loss": "contrastive", "crop_seconds": 5.0, "batch_size": 4, "max_steps": 6}
    assert {k: recorded[k] for k in want} == want
    assert recorded["checkpoint_every_steps"] == 1 and recorded["preset"] == "tiny"
    names = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    assert names == ["step-step=6.ckpt", "val-step=6.ckpt"]
    refused = _hx(
        "train", "--data", str(cache), "--out", str(out), "--resume", "--max-steps", "8",
        "--batch-size", "8",
    )  # fmt: skip
    assert refused.returncode == 1
    assert "batch_size (4 in the run, 8 now)" in refused.stderr


def test_resume_refuses_changes_to_what_the_run_learns(cache, tmp_path):
    out = tmp_path / "run"
    train(_config(cache, out, max_steps=2, val_pairs=20))
    with pytest.raises(ValueError, match=r"config.json: .*lr \(0.002 in the run, 0.001 now\)"):
        train(_config(cache, out, max_steps=4, val_pairs=20, lr=1e-3), resume=True)
    with pytest.raises(ValueError, match="model d_model"):
        train(_config(cache, out, max_steps=4, val_pairs=20), {"d_model": 32}, resume=True)
    (out / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json: missing"):
        train(_config(cache, out, max_steps=4, val_pairs=20), resume=True)


def test_prune_keeps_the_newest_of_each_kind(tmp_path):
    from harmonixr.train.run import prune_checkpoints

    for name in ("step-step=2", "step-step=10", "step-step=4", "val-step=3", "val-step=9", "x"):
        (tmp_path / f"{name}.ckpt").write_bytes(b"")
    prune_checkpoints(tmp_path, keep=2)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [
        "step-step=10.ckpt",
        "step-step=4.ckpt",
        "val-step=3.ckpt",
        "val-step=9.ckpt",
        "x.ckpt",
    ]
    prune_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-step=10.ckpt", "val-step=9.ckpt", "x.ckpt"
    ]  # fmt: skip


def test_validation_without_same_composer_pairs_warns_and_still_exports(tmp_path):
    from harmonixr.train.run import NoValidationWarning

    synthetic_corpus(tmp_path / "midi", n_per=4, seconds=6)
    preprocess(tmp_path / "midi", tmp_path / "cache", workers=1)
    cfg = _config(tmp_path / "cache", tmp_path / "run", max_steps=2, crop_seconds=5)
    with pytest.warns(NoValidationWarning, match=r"split_fractions"):
        run = train(cfg)
    assert weights_info(run)["step"] == 2 and "val/auc" not in weights_info(run)["metrics"]


def test_progress_bar_counts_the_epochs_of_max_steps():
    from harmonixr.train.quiet import StepsProgressBar

    assert StepsProgressBar(5)._get_train_description(2).strip() == "Epoch 2/4"
