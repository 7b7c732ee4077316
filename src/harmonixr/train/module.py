"""The thin LightningModule: a SiaViT encoder, a contrastive loss and the original project's
pair-set validation."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import lightning as L
import numpy as np
import torch

from harmonixr.data.pairs import PairSet, PieceSet
from harmonixr.evaluate.metrics import (
    cosine_distance,
    pair_set_protocol,
    roc_auc,
    shared_positive_rate,
)
from harmonixr.model.config import ModelConfig
from harmonixr.model.embed import to_model_input
from harmonixr.model.encoder import SiaViT
from harmonixr.model.losses import (
    DynamicMarginContrastive,
    contrastive_loss,
    pair_distance,
    supcon_loss,
)
from harmonixr.train.augment import augment
from harmonixr.train.config import TrainConfig
from harmonixr.train.schedule import lr_factor


@dataclass
class ValData:
    """Validation pieces (centre crops) and the fixed pair sets over them."""

    pieces: PieceSet
    pseudo: PairSet  # chooses the threshold
    sets: list[PairSet]  # mixed, same, different


class SiameseModule(L.LightningModule):
    def __init__(
        self, model_config: ModelConfig, config: TrainConfig, val: ValData | None = None
    ) -> None:
        super().__init__()
        self.model_config, self.config, self.val = model_config, config, val
        self.encoder = SiaViT(model_config)
        self.margin_loss = DynamicMarginContrastive(
            momentum=config.margin_momentum,
            floor=config.margin_floor,
            floor_growth=config.margin_floor_growth,
            floor_max=config.margin_floor_max,
        )
        self._val_z: list[torch.Tensor] = []
        self._val_idx: list[torch.Tensor] = []

    # ------------------------------------------------------------------ training

    def _embed(self, x: torch.Tensor, lengths: torch.Tensor, train: bool) -> torch.Tensor:
        x = to_model_input(x)
        if train:
            x, lengths = augment(x, lengths, self.config)
        return self.encoder(x, lengths)

    def on_train_epoch_start(self) -> None:
        self.margin_loss.start_epoch(self.current_epoch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.config.loss == "supcon":
            z = self._embed(batch["x"], batch["len"], train=True)
            loss = supcon_loss(z, batch["label"], self.config.supcon_temperature)
            bs = z.shape[0]
            if "group" in batch:  # how often positives share a work (0 by construction)
                shared = shared_positive_rate(
                    batch["label"].cpu().numpy(), batch["group"].cpu().numpy()
                )
                if np.isfinite(shared):
                    self.log("train/pos_shared_work", shared, batch_size=bs)
        else:
            x = torch.cat((batch["x1"], batch["x2"]))
            lengths = torch.cat((batch["len1"], batch["len2"]))
            z = self._embed(x, lengths, train=True)
            bs = batch["y"].shape[0]
            d = pair_distance(z[:bs], z[bs:])
            margin = self.margin_loss.margin
            loss = self.margin_loss(d, batch["y"])
            self.log("train/margin", margin, batch_size=bs)
            self.log("train/d_same", _masked_mean(d, batch["y"] > 0.5), batch_size=bs)
            self.log("train/d_diff", _masked_mean(d, batch["y"] <= 0.5), batch_size=bs)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        return loss

    # ------------------------------------------------------------------ validation

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        z = self._embed(batch["x"], batch["len"], train=False)
        self._val_z.append(z.float().cpu())
        self._val_idx.append(batch["index"].cpu())

    def on_validation_epoch_end(self) -> None:
        if self.val is None or not self._val_z:
            return
        z = torch.cat(self._val_z)
        idx = torch.cat(self._val_idx)
        self._val_z, self._val_idx = [], []
        emb = torch.zeros(len(self.val.pieces), z.shape[1])
        emb[idx] = z
        metrics = validation_metrics(emb.numpy(), self.val, self.config.static_margin)
        for name, value in metrics.items():
            if np.isfinite(value):
                self.log(
                    f"val/{name}", value, sync_dist=False, batch_size=1, prog_bar=name == "auc"
                )

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.encoder.named_parameters():
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.config.lr,
        )
        c = self.config
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            partial(
                lr_factor, warmup=c.warmup_steps, total=c.total_steps, min_ratio=c.min_lr_ratio
            ),
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _masked_mean(d: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    return d[sel].mean() if bool(sel.any()) else torch.tensor(float("nan"), device=d.device)


def validation_metrics(emb: np.ndarray, val: ValData, static_margin: float) -> dict[str, float]:
    """The original project's pair-set protocol (``evaluate.metrics.pair_set_protocol``,
    distance 1 − cosine) on the validation pieces: the pseudo-validation set picks
    ``threshold``; each set reports ``acc_<name>`` there (its pair count is not logged). The
    mixed set also reports ``auc`` and ``loss_static``, the contrastive loss with the static
    margin on the loss's own distance (Euclidean, ``sqrt(2 · (1 − cosine))`` for unit
    embeddings)."""
    scores = pair_set_protocol(emb, val.pseudo, emb, val.sets)
    out = {k: v for k, v in scores.items() if not k.startswith("n_")}
    for ps in val.sets:
        if ps.name != "mixed" or not len(ps):
            continue
        d = cosine_distance(emb[ps.i], emb[ps.j])
        both = 0 < int(ps.y.sum()) < len(ps)
        out["auc"] = roc_auc(d, ps.y) if both else float("nan")
        euclid = torch.from_numpy(np.sqrt(2.0 * np.clip(d, 0.0, None)))
        out["loss_static"] = float(contrastive_loss(euclid, torch.from_numpy(ps.y), static_margin))
    return out
