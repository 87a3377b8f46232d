"""A ground-truth DNN feature bank with category structure.

Categories are grouped into superordinate classes; each category has a semantic code shared by
all layers and a "visual" code that changes gradually from layer to layer. Lower layers weigh the
visual code and image-specific variation more, higher layers the semantic code, so higher layers
are more categorical, as in a real CNN.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

LAYERS = tuple(f"cnn{i}" for i in range(1, 9))


@dataclass
class FeatureBank:
    """Category-mean features per layer and the generator of image features.

    Parameters
    ----------
    labels : list of str
        Category names, one per category.
    superclass : numpy.ndarray
        int array of shape (n_categories,): superordinate class of each category.
    layers : tuple of str
        Layer names.
    category_features : dict of str to numpy.ndarray
        float32 arrays of shape (n_categories, n_units) per layer: category means.
    mixing : dict of str to numpy.ndarray
        Arrays of shape (n_units, n_latent) per layer mapping latent codes to units.
    image_sd : numpy.ndarray
        Array of shape (n_layers,): image-specific variation in latent units per layer.
    unit_noise_sd : float
        Independent per-unit variation of an image's features, in latent units.
    unit_scale : dict of str to (numpy.ndarray, numpy.ndarray), optional
        A real bank's per-unit mean and sd over its categories: the simulator works on z-scored
        units, sessions are written back in the network's own units (:meth:`to_raw`).
    """

    labels: list[str]
    superclass: np.ndarray
    layers: tuple[str, ...]
    category_features: dict[str, np.ndarray]
    mixing: dict[str, np.ndarray]
    image_sd: np.ndarray
    unit_noise_sd: float
    unit_scale: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def to_raw(self, layer: str, features: np.ndarray) -> np.ndarray:
        """Features of ``layer`` in the network's units (unchanged for a synthetic bank)."""
        if self.unit_scale is None:
            return features
        mean, sd = self.unit_scale[layer]
        return (features * sd + mean).astype(np.float32)

    @property
    def n_categories(self) -> int:
        """Number of categories."""
        return len(self.labels)

    def image_features(self, categories: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Draw the features of one new image of each given category.

        Parameters
        ----------
        categories : numpy.ndarray
            int array of shape (n_images,), category indices.
        rng : numpy.random.Generator

        Returns
        -------
        dict of str to numpy.ndarray
            float32 arrays of shape (n_images, n_units) per layer.
        """
        out = {}
        for li, layer in enumerate(self.layers):
            m = self.mixing[layer]
            latent = rng.standard_normal((len(categories), m.shape[1])) * self.image_sd[li]
            noise = rng.standard_normal((len(categories), m.shape[0])) * self.unit_noise_sd
            out[layer] = (self.category_features[layer][categories] + latent @ m.T + noise).astype(np.float32)
        return out


def make_feature_bank(
    n_categories: int = 1000,
    n_units: int = 200,
    n_latent: int = 32,
    n_superclasses: int = 25,
    seed: int = 0,
) -> FeatureBank:
    """Generate a feature bank.

    Parameters
    ----------
    n_categories : int
        Number of categories (GOD's candidate sets have 1,000 or more).
    n_units : int
        Units per layer.
    n_latent : int
        Dimension of the semantic and visual codes.
    n_superclasses : int
        Number of superordinate classes; categories within one share part of their semantic code.
    seed : int

    Returns
    -------
    FeatureBank
    """
    if n_categories < 2 or n_units < 2:
        raise ValueError(f"n_categories and n_units must be >= 2, got {n_categories}, {n_units}")
    rng = np.random.default_rng(seed)
    n_layers = len(LAYERS)
    superclass = rng.integers(0, n_superclasses, n_categories)
    super_codes = rng.standard_normal((n_superclasses, n_latent))
    semantic = np.sqrt(0.5) * super_codes[superclass] + np.sqrt(0.5) * rng.standard_normal(
        (n_categories, n_latent)
    )
    visual = rng.standard_normal((n_categories, n_latent))
    # Weight of the semantic code grows with depth; image-specific variation shrinks.
    semantic_weight = np.linspace(0.15, 0.95, n_layers)
    image_sd = np.linspace(0.9, 0.35, n_layers)
    labels = [f"c{i:04d}_s{superclass[i]:02d}" for i in range(n_categories)]
    category_features, mixing = {}, {}
    for li, layer in enumerate(LAYERS):
        if li:
            visual = 0.7 * visual + np.sqrt(1 - 0.7**2) * rng.standard_normal(visual.shape)
        code = np.sqrt(semantic_weight[li]) * semantic + np.sqrt(1 - semantic_weight[li]) * visual
        m = rng.standard_normal((n_units, n_latent)) / np.sqrt(n_latent)
        offset = np.abs(rng.standard_normal(n_units)) * 0.5  # units have positive mean activations
        mixing[layer] = m
        category_features[layer] = (code @ m.T + offset).astype(np.float32)
    return FeatureBank(
        labels=labels,
        superclass=superclass,
        layers=LAYERS,
        category_features=category_features,
        mixing=mixing,
        image_sd=image_sd,
        unit_noise_sd=0.3,
    )


def load_feature_bank(path: str | Path) -> FeatureBank:
    """A bank of real DNN features (``features.npz`` of ``tools/extract_features.py``) for the simulator.

    Each layer's units are z-scored over the categories, so that the simulator's noise levels mean
    the same for every network; sessions are written in the network's units again
    (:meth:`FeatureBank.to_raw`), so decoders predict what the network computes. Images of a
    category vary only by independent unit noise (the real bank has no latent model);
    superclasses are unknown (all 0).

    Raises
    ------
    ValueError
        If the file has no ``labels``, its layers differ in units, or it has not 8 layers (the
        simulator maps ROIs onto 8 layers).
    """
    with np.load(path, allow_pickle=False) as z:
        if "labels" not in z.files:
            raise ValueError(f"{path}: no 'labels' array (not a features.npz bank)")
        labels = [str(s) for s in z["labels"]]
        feats = {k.removeprefix("feat_"): z[k].astype(np.float64) for k in z.files if k.startswith("feat_")}
    layers = tuple(feats)
    n_units = {f.shape[1] for f in feats.values()}
    if len(layers) != len(LAYERS) or len(n_units) != 1:
        raise ValueError(
            f"{path}: the simulator needs {len(LAYERS)} layers with equal unit counts, got "
            f"{ {ly: f.shape[1] for ly, f in feats.items()} }"
        )
    category_features, scale = {}, {}
    for ly, f in feats.items():
        scale[ly] = (f.mean(0), np.where(f.std(0) > 0, f.std(0), 1.0))
        category_features[ly] = ((f - scale[ly][0]) / scale[ly][1]).astype(np.float32)
    n = n_units.pop()
    return FeatureBank(
        labels=labels,
        superclass=np.zeros(len(labels), dtype=int),
        layers=layers,
        category_features=category_features,
        mixing={ly: np.zeros((n, 1)) for ly in layers},
        image_sd=np.zeros(len(layers)),
        unit_noise_sd=0.3,
        unit_scale=scale,
    )
