"""Nonlinear decoders in torch: one small MLP per ROI predicting every layer's units.

``rtdecode train --model mlp`` fits them on the same block averages as the ridge decoders; the
bundle has the ridge bundle's interface (``predict``, ``roi_names``, ``layer_slices``, ``rois``,
``mask``), so the pipeline runs either. On disk: ``decoder.json`` (format ``rtdecode-mlp``, the
architecture), ``decoder.npz`` (mask, affine, voxel positions, normalisations) and ``mlp.pt``, a
state dict read with ``torch.load(weights_only=True)``. torch is an optional extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rtdecode.errors import ModelFileError, VolumeError
from rtdecode.models.files import mask_checksum, read_model, write_model
from rtdecode.models.linear import Share, in_turn
from rtdecode.numerics.stats import zscore

MLP_FORMAT = "rtdecode-mlp"
MLP_VERSION = 1


def _mlp(n_in: int, hidden: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))


@dataclass
class MLPBundle:
    """Per ROI: ``y = y_mean + y_sd * mlp((x[positions] - x_mean) / x_sd)``."""

    mask: np.ndarray
    affine: np.ndarray
    rois: dict[str, np.ndarray]
    layers: list[str]
    n_units: list[int]
    norms: dict[str, dict[str, np.ndarray]]  # roi -> x_mean, x_sd, y_mean, y_sd
    nets: dict[str, nn.Sequential]
    hidden: int
    dropout: float
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        bounds = np.concatenate([[0], np.cumsum(self.n_units)])
        self.layer_slices = {
            ly: slice(int(a), int(b)) for ly, a, b in zip(self.layers, bounds[:-1], bounds[1:])
        }
        self.roi_names = list(self.rois)
        # Two cores: a second intra-op thread spins against the sender and subscribers.
        torch.set_num_threads(1)
        for net in self.nets.values():
            net.eval()

    @property
    def n_voxels(self) -> int:
        """Number of analysis voxels."""
        return int(self.mask.sum())

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Features of all layers from every ROI, float32 (n_rois, sum(n_units))."""
        if x.shape != (self.n_voxels,):
            raise VolumeError(f"expected {self.n_voxels} analysis voxels, got shape {x.shape}")
        return self.predict_many(x[None])[0]

    def predict_many(self, xs: np.ndarray, share: Share | None = None) -> np.ndarray:
        """:meth:`predict` of each row of ``xs`` (n, n_voxels): float32 (n, n_rois, sum(n_units)).

        One volume at a time: a batched matrix product may sum in another order, and a volume's
        features must not depend on what it was decoded with. ``share`` (:data:`Share`) runs
        one task per ROI; None runs them in turn.
        """
        out = np.empty((len(xs), len(self.roi_names), sum(self.n_units)), dtype=np.float32)
        (share or in_turn)(partial(self._roi, xs, out), len(self.roi_names))
        return out

    def _roi(self, xs: np.ndarray, out: np.ndarray, i: int) -> None:
        roi = self.roi_names[i]
        n = self.norms[roi]
        with torch.inference_mode():
            for v, x in enumerate(xs):
                xz = torch.from_numpy(((x[self.rois[roi]] - n["x_mean"]) / n["x_sd"]).astype(np.float32))
                out[v, i] = self.nets[roi](xz[None])[0].numpy() * n["y_sd"] + n["y_mean"]

    def save(self, directory: str | Path) -> Path:
        """Write ``decoder.json``, ``decoder.npz`` and ``mlp.pt``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {"mask": self.mask, "affine": self.affine}
        for roi in self.roi_names:
            arrays[f"roi/{roi}"] = self.rois[roi]
            arrays |= {f"{k}/{roi}": v.astype(np.float32) for k, v in self.norms[roi].items()}
        torch.save(
            {f"{roi}.{k}": v for roi, net in self.nets.items() for k, v in net.state_dict().items()},
            d / "mlp.pt",
        )
        meta = {
            "rois": self.roi_names,
            "layers": self.layers,
            "n_units": [int(n) for n in self.n_units],
            "hidden": self.hidden,
            "dropout": self.dropout,
            "mask_sha256": mask_checksum(self.mask),
            "meta": self.meta,
        }
        write_model(d / "decoder", MLP_FORMAT, MLP_VERSION, arrays, meta, companions=["mlp.pt"])
        return d

    @classmethod
    def load(cls, directory: str | Path) -> MLPBundle:
        """Load and verify a bundle written by :meth:`save` (weights only, never pickled objects).

        Raises
        ------
        ModelFileError
            If a file is missing or corrupt, or ``mlp.pt`` holds anything but tensors.
        """
        d = Path(directory)
        meta, z = read_model(d / "decoder", MLP_FORMAT, MLP_VERSION, companions=["mlp.pt"])
        try:
            state = torch.load(d / "mlp.pt", map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError and others for unsafe content
            raise ModelFileError(f"{d / 'mlp.pt'}: not a plain state dict ({type(err).__name__})") from err
        n_out = sum(meta["n_units"])
        rois, norms, nets = {}, {}, {}
        mask, affine = z["mask"], z["affine"]
        for roi in meta["rois"]:
            rois[roi] = z[f"roi/{roi}"]
            norms[roi] = {k: z[f"{k}/{roi}"] for k in ("x_mean", "x_sd", "y_mean", "y_sd")}
            net = _mlp(rois[roi].size, meta["hidden"], n_out, meta["dropout"])
            net.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{roi}.")})
            nets[roi] = net
        if mask_checksum(mask) != meta["mask_sha256"]:
            raise ModelFileError(f"{d / 'decoder.npz'}: mask checksum differs from decoder.json")
        return cls(
            mask,
            affine,
            rois,
            meta["layers"],
            meta["n_units"],
            norms,
            nets,
            meta["hidden"],
            meta["dropout"],
            meta["meta"],
        )


def fit_mlp_bundle(
    x_blocks: np.ndarray,
    y_blocks: dict[str, np.ndarray],
    mask: np.ndarray,
    affine: np.ndarray,
    rois: dict[str, np.ndarray],
    hidden: int = 256,
    dropout: float = 0.2,
    weight_decay: float = 0.05,
    epochs: int = 400,
    seed: int = 0,
    meta: dict | None = None,
) -> MLPBundle:
    """Fit one MLP per ROI on z-scored block averages (Adam, full batch, weight decay)."""
    torch.manual_seed(seed)
    layers = list(y_blocks)
    y = np.hstack([y_blocks[ly] for ly in layers]).astype(np.float64)
    yz_np, y_mean, y_sd = zscore(y)
    yz = torch.from_numpy(yz_np.astype(np.float32))
    norms, nets = {}, {}
    for roi, pos in rois.items():
        xz_np, x_mean, x_sd = zscore(x_blocks[:, pos].astype(np.float64))
        xz = torch.from_numpy(xz_np.astype(np.float32))
        net = _mlp(pos.size, hidden, y.shape[1], dropout)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=weight_decay)
        net.train()
        for _ in range(epochs):
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(xz), yz)
            loss.backward()
            opt.step()
        nets[roi] = net
        norms[roi] = {"x_mean": x_mean, "x_sd": x_sd, "y_mean": y_mean, "y_sd": y_sd}
    n_units = [y_blocks[ly].shape[1] for ly in layers]
    info = dict(
        meta or {}, model="mlp", epochs=epochs, weight_decay=weight_decay, n_blocks=int(x_blocks.shape[0])
    )
    return MLPBundle(
        np.asarray(mask, bool), affine, rois, layers, n_units, norms, nets, hidden, dropout, info
    )
