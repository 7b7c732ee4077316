"""A trained run against baselines on the run's own validation pairs (same crops, same pairs).

    python bench/compare_val.py RUN [--set val|test]

Builds the split, centre crops and fixed pair sets exactly as training does, then reports the
seed's metrics (threshold from the pseudo-validation set; mixed / same / different accuracy;
AUC) for: the trained model (RUN/model.safetensors), the same architecture untrained, four
histogram baselines (cosine) and a logistic regression on the four histograms (trained on the
training split; its class probabilities as embeddings).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from harmonixr.data.cache import TensorCache
from harmonixr.data.pairs import PieceSet, centre_crop, to_model_input
from harmonixr.data.splits import load_split
from harmonixr.evaluate.baselines import HISTOGRAMS, fit_histogram_lr, histogram_embeddings
from harmonixr.model import ModelConfig, SiaViT, load
from harmonixr.train.config import TrainConfig
from harmonixr.train.module import validation_metrics
from harmonixr.train.run import make_val_data


def crops(pieces: PieceSet, length: int) -> list[np.ndarray]:
    return [centre_crop(t, length) for t in pieces.tensors]


@torch.no_grad()
def embed(model: SiaViT, cropped: list[tuple[np.ndarray, int]], batch: int = 32) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(cropped), batch):
        chunk = cropped[s : s + batch]
        x = torch.from_numpy(np.stack([c[0] for c in chunk]))
        lengths = torch.tensor([c[1] for c in chunk])
        out.append(model(to_model_input(x), lengths).numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--set", default="val", choices=["val", "test"])
    args = ap.parse_args()
    stored = json.loads((args.run / "config.json").read_text())
    config = TrainConfig.from_dict(stored["train"])
    with TensorCache(config.data) as cache:
        rows = cache.pieces()
        split = load_split(args.run / "split.json", rows)
        names = stored["composers"]
        train = PieceSet.from_cache(cache, [rows[i] for i in split["train"]], names)
        held = PieceSet.from_cache(cache, [rows[i] for i in split[args.set]], names)
    val = make_val_data(held, config)
    if val is None:
        raise SystemExit(f"the {args.set} split has too few pieces or composers")
    held_crops = crops(held, config.crop_frames)
    results: dict[str, dict[str, float]] = {}
    results["SiaViT (trained)"] = validation_metrics(
        embed(load(args.run), held_crops), val, config.static_margin
    )
    torch.manual_seed(config.seed)
    untrained = SiaViT(ModelConfig.from_dict(stored["model"]))
    results["SiaViT (untrained)"] = validation_metrics(
        embed(untrained, held_crops), val, config.static_margin
    )
    held_t = [c[0][: c[1]] for c in held_crops]
    for kind in HISTOGRAMS:
        results[f"{kind} histogram"] = validation_metrics(
            histogram_embeddings(held_t, kind), val, config.static_margin
        )
    train_t = [c[0][: c[1]] for c in crops(train, config.crop_frames)]
    lr_embed = fit_histogram_lr(train_t, train.composers, config.seed)
    results["logistic regression, 4 histograms"] = validation_metrics(
        lr_embed(held_t), val, config.static_margin
    )
    print(
        f"{args.run} — {args.set} split: {len(held)} pieces, {len(val.sets[0])} mixed pairs, "
        f"{len(val.sets[1])} same, {len(val.sets[2])} different; centre crops of "
        f"{config.crop_seconds:g} s"
    )
    print("| method | AUC | acc mixed | acc same | acc different | threshold |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, m in results.items():
        print(
            f"| {name} | {m.get('auc', float('nan')):.3f} | {m.get('acc_mixed', float('nan')):.3f} "
            f"| {m.get('acc_same', float('nan')):.3f} | {m.get('acc_different', float('nan')):.3f} "
            f"| {m.get('threshold', float('nan')):.3f} |"
        )


if __name__ == "__main__":
    main()
