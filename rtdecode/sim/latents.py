"""Ground-truth diffusion-model targets for simulated stimuli (Takagi & Nishimoto 2023's two).

The image latent (4 x 40 x 40) is a fixed linear function of the stimulus's early-layer features,
the text conditioning (77 x 768) of its late-layer features, each through a 32-dimensional code,
so that early visual cortex carries the first and ventral cortex the second, as in the paper.
"""

from __future__ import annotations

import numpy as np

IMAGE_SHAPE = (4, 40, 40)
TEXT_SHAPE = (77, 768)
_SOURCES = {"image": (IMAGE_SHAPE, ("cnn1", "cnn2")), "text": (TEXT_SHAPE, ("cnn7", "cnn8"))}


def latent_targets(stimulus_features: dict[str, np.ndarray], subject_seed: int) -> dict[str, np.ndarray]:
    """``{"image": (n, 4, 40, 40), "text": (n, 77, 768)}`` float32 for n stimuli.

    The maps are fixed by ``subject_seed``, so a subject's training and test sessions share them.
    """
    out = {}
    for k, (name, (shape, layers)) in enumerate(_SOURCES.items()):
        rng = np.random.default_rng([subject_seed, 3000 + k])
        f = np.hstack([stimulus_features[ly] for ly in layers]).astype(np.float64)
        code = f @ (rng.standard_normal((f.shape[1], 32)) / np.sqrt(f.shape[1]))
        n_out = int(np.prod(shape))
        expand = rng.standard_normal((32, n_out)).astype(np.float32) / np.float32(np.sqrt(32))
        out[name] = (code.astype(np.float32) @ expand).reshape(-1, *shape)
    return out
