"""Feature inversion: an image whose DNN features match decoded ones (Shen et al. 2019, on a CPU).

Deep image reconstruction optimises an image until the network's features of it match the
features decoded from the brain, layer by layer, under an image prior. Here:

- only the decoded units count (the units a bank sampled, :class:`~rtdecode.models.cnn.BankSpec`);
  each layer's loss is ``1 - r`` between the image's and the decoded features, both standardised
  with the bank's per-unit statistics, so layers weigh as set and decoders whose predictions
  shrink towards the mean (ridge) are not penalised for their scale;
- the image is a Laplacian-pyramid sum of levels from 7 px up to 224 px (the blur prior: coarse
  structure first, fine detail only where the features ask for it), squashed by ``tanh`` into the
  pixel range; it is shifted by a random jitter each step, and its total variation is penalised;
- with a ``generator`` (any module mapping a latent vector to an image in the network's input
  range), the latent is optimised instead: the generator prior.

Everything random comes from ``seed``, so a reconstruction is reproducible. Quality grows with
the number of steps; ``time_limit_s`` stops early to keep up with a session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from rtdecode.errors import ConfigError
from rtdecode.models.cnn import IMAGE_SIZE, BankSpec, Network, to_image, to_input

PYRAMID = (7, 14, 28, 56, 112, 224)


@dataclass
class InversionParams:
    """Settings of a feature inversion; :meth:`check` validates them.

    Parameters
    ----------
    steps : int
        Optimisation steps (Adam).
    learning_rate : float
        Adam's step size.
    layer_weights : mapping of str to float
        Weight of each layer's loss; layers absent from the mapping get ``default_weight``.
    default_weight : float
    jitter_px : int
        Largest random shift of the image per step, in pixels.
    tv_weight : float
        Weight of the total-variation penalty.
    l2_weight : float
        Weight of the mean squared pixel value (keeps colours from saturating).
    pyramid : tuple of int
        Sizes of the image's pyramid levels (the last must be 224); ``(224,)`` is plain pixels.
    time_limit_s : float
        Stop after this many seconds (0: run every step).
    snapshots : tuple of int
        Keep the image after these steps too (how quality grows with time).
    seed : int
    """

    steps: int = 100
    learning_rate: float = 0.05
    # The lowest layer carries the layout and colour a pixel-level comparison sees.
    layer_weights: Mapping[str, float] = field(default_factory=lambda: {"stage1": 3.0})
    default_weight: float = 1.0
    jitter_px: int = 4
    tv_weight: float = 5.0
    l2_weight: float = 1.0
    pyramid: tuple[int, ...] = PYRAMID
    time_limit_s: float = 0.0
    snapshots: tuple[int, ...] = ()
    seed: int = 0

    def check(self) -> InversionParams:
        """Return self, or raise :class:`~rtdecode.errors.ConfigError` naming the bad value."""
        bad = []
        if self.steps < 1:
            bad.append(f"steps must be >= 1, got {self.steps}")
        if not self.learning_rate > 0:
            bad.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if min(self.jitter_px, self.tv_weight, self.l2_weight, self.time_limit_s) < 0:
            bad.append("jitter_px, tv_weight, l2_weight and time_limit_s must be >= 0")
        if not self.pyramid or self.pyramid[-1] != IMAGE_SIZE or list(self.pyramid) != sorted(self.pyramid):
            bad.append(f"pyramid must rise to {IMAGE_SIZE}, got {self.pyramid}")
        if any(w < 0 for w in self.layer_weights.values()) or self.default_weight < 0:
            bad.append("layer weights must be >= 0")
        if bad:
            raise ConfigError("feature inversion: " + "; ".join(bad))
        return self


@dataclass
class Inverted:
    """A reconstruction: the image, the final feature loss, and how it got there."""

    image: np.ndarray  # uint8 (224, 224, 3)
    loss: float  # weighted mean over layers of 1 - r, at the last step
    steps: int
    seconds: float
    layer_r: dict[str, float]  # per layer, r between the image's and the target features
    history: list[tuple[float, float]]  # (seconds, loss) per step
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)  # step -> image after it


class FeatureInverter:
    """Reconstruct images from (decoded) features of a bank's sampled units.

    Parameters
    ----------
    spec : BankSpec
        Layers, sampled units and their statistics.
    params : InversionParams, optional
    network : Network, optional
        Default: EfficientNet-lite0 with its weights.
    generator : torch.nn.Module, optional
        An image prior: ``generator(z)`` gives (1, 3, H, W) images in [-1, 1] from ``z`` of shape
        ``generator.latent_shape`` (default ``(1, 128)``).
    """

    def __init__(
        self,
        spec: BankSpec,
        params: InversionParams | None = None,
        network: Network | None = None,
        generator: torch.nn.Module | None = None,
    ) -> None:
        self.spec, self.params = spec, (params or InversionParams()).check()
        self.network = network or Network()
        self.generator = generator
        if generator is not None:
            for p in generator.parameters():
                p.requires_grad_(False)

    def _targets(self, targets: Mapping[str, np.ndarray]) -> dict[str, tuple[torch.Tensor, float]]:
        out = {}
        for layer, t in targets.items():
            if layer not in self.spec.units:
                raise KeyError(f"layer {layer!r} is not in the bank (it has {self.spec.layers})")
            t = np.asarray(t, dtype=np.float32).ravel()
            if t.size != self.spec.units[layer].size or not np.isfinite(t).all():
                raise ValueError(
                    f"layer {layer!r}: {t.size} target values (finite: {bool(np.isfinite(t).all())}), "
                    f"the bank samples {self.spec.units[layer].size} units"
                )
            w = self.params.layer_weights.get(layer, self.params.default_weight)
            if w > 0:
                z = (t - self.spec.mean[layer]) / self.spec.sd[layer]
                z = (z - z.mean()) / (z.std() + 1e-8)
                out[layer] = (torch.from_numpy(z), float(w))
        if not out:
            raise ValueError("no layer with a positive weight to reconstruct from")
        return out

    def _layer_r(
        self, x: torch.Tensor, goal: dict[str, tuple[torch.Tensor, float]]
    ) -> dict[str, torch.Tensor]:
        feats = self.network.features(x, goal)
        out = {}
        for layer, f in feats.items():
            z = (f[0, self.spec.units[layer]] - torch.from_numpy(self.spec.mean[layer])) / torch.from_numpy(
                self.spec.sd[layer]
            )
            z = (z - z.mean()) / (z.std() + 1e-8)
            out[layer] = (z * goal[layer][0]).mean()
        return out

    def reconstruct(
        self, targets: Mapping[str, np.ndarray], progress: Callable[[int, float], None] | None = None
    ) -> Inverted:
        """An image whose features correlate best with ``targets`` (layer → (n_units,) values).

        Parameters
        ----------
        targets : mapping of str to numpy.ndarray
            Decoded (or true) features of the bank's sampled units, in the bank's raw space.
        progress : callable, optional
            Called with (step, loss) after each step.

        Raises
        ------
        KeyError, ValueError
            A layer the bank does not have, a target of the wrong size or with NaNs.
        """
        p = self.params
        goal = self._targets(targets)
        total_w = sum(w for _, w in goal.values())
        gen = torch.Generator().manual_seed(p.seed)
        if self.generator is not None:
            shape = tuple(getattr(self.generator, "latent_shape", (1, 128)))
            params = [(torch.randn(shape, generator=gen) * 0.1).requires_grad_(True)]
        else:
            params = [(torch.randn(1, 3, s, s, generator=gen) * 0.01).requires_grad_(True) for s in p.pyramid]
        opt = torch.optim.Adam(params, lr=p.learning_rate)
        t0, history, snapshots = time.perf_counter(), [], {}
        for step in range(p.steps):
            x = self._image(params)
            dy, dx = (
                torch.randint(-p.jitter_px, p.jitter_px + 1, (2,), generator=gen) if p.jitter_px else (0, 0)
            )
            rs = self._layer_r(torch.roll(x, (int(dy), int(dx)), dims=(2, 3)), goal)
            loss = sum(w * (1 - rs[ly]) for ly, (_, w) in goal.items()) / total_w
            objective = (
                loss + p.tv_weight * _tv(x) + p.l2_weight * (x**2).mean() if self.generator is None else loss
            )
            opt.zero_grad()
            objective.backward()
            opt.step()
            elapsed = time.perf_counter() - t0
            history.append((elapsed, float(loss.detach())))
            if step + 1 in p.snapshots:
                snapshots[step + 1] = to_image(self._image(params))
            if progress is not None:
                progress(step, history[-1][1])
            if p.time_limit_s and elapsed >= p.time_limit_s:
                break
        with torch.no_grad():
            x = self._image(params)
            rs = self._layer_r(x, goal)
            final = float(sum(w * (1 - rs[ly]) for ly, (_, w) in goal.items()) / total_w)
        return Inverted(
            image=to_image(x),
            loss=final,
            steps=len(history),
            seconds=time.perf_counter() - t0,
            layer_r={ly: float(r) for ly, r in rs.items()},
            history=history,
            snapshots=snapshots,
        )

    def _image(self, params: list[torch.Tensor]) -> torch.Tensor:
        if self.generator is not None:
            x = self.generator(params[0])
            if x.shape[-1] != IMAGE_SIZE:
                x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
            return x.clamp(-1, 1)
        s = sum(
            F.interpolate(v, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
            for v in params
        )
        return torch.tanh(s)


def _tv(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels (total variation, squared)."""
    return ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean() + ((x[..., :, 1:] - x[..., :, :-1]) ** 2).mean()


def true_features(spec: BankSpec, images: Mapping[str, np.ndarray], network: Network) -> dict[str, dict]:
    """Each image's own features of the bank's sampled units: ``{name: {layer: (n_units,)}}``."""
    out = {}
    with torch.no_grad():
        for name, img in images.items():
            feats = network.features(to_input(img), spec.layers)
            out[name] = {ly: f[0, spec.units[ly]].numpy() for ly, f in feats.items()}
    return out
