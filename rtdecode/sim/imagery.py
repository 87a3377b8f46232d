"""GOD's imagery runs: a cue, then the category imagined, weaker than seen and top-down.

From the GOD dataset's description: a trial is a 3 s cue (the category's name), 15 s of imagery
with eyes closed, 3 s to rate its vividness and 3 s of rest; a run holds 25 categories, the 50
test categories in all, none of them trained on. Here the imagined category's mean features (no
image) drive every visual voxel's perception tuning,

* scaled per ROI (``SimParams.imagery_gain``: higher areas keep more, about a third in LOC, FFA
  and PPA, a tenth in V1),
* scaled per trial by its vividness (log-normal, ``imagery_vividness_sd``),
* delayed per DNN layer: the highest layer's features appear first, the lowest
  ``imagery_layer_delay_s`` later (the top-down order Horikawa & Kamitani report).

The cue itself is a brief visual response of every visual voxel (``visual_on_pct``).
"""

from __future__ import annotations

import numpy as np

from rtdecode.sim.phantom import ROIS
from rtdecode.sim.subject import SimParams, Subject, boxcar_response, voxel_responses


def layer_delays_s(p: SimParams, n_layers: int) -> np.ndarray:
    """Onset delay of each layer's imagery signal (layer 0 the lowest), seconds."""
    return p.imagery_layer_delay_s * (n_layers - 1 - np.arange(n_layers)) / max(n_layers - 1, 1)


def voxel_gain(p: SimParams, subject: Subject) -> np.ndarray:
    """Imagery's share of the perception response for every VC voxel, by its ROI."""
    gain = np.zeros(subject.voxel_index.size)
    for roi in ROIS:
        inside = subject.phantom.rois[roi].ravel()[subject.voxel_index]
        gain[inside] = p.imagery_gain.get(roi, 0.0)
    return gain


def imagery_signal(p: SimParams, subject: Subject, rng: np.random.Generator) -> tuple:
    """The task signal, events and imagined features of an imagery run over the test categories.

    Returns
    -------
    n_vols : int
    signal_pct : numpy.ndarray
        Shape (n_vols, n_vc).
    events : list of dict
        Per trial a ``cue`` row and an ``imagery`` row (``trial_type``), both with the category.
    feats : dict of str to numpy.ndarray
        The imagined categories' mean features per layer, (n_trials, n_units).
    """
    trial_s = p.imagery_cue_s + p.imagery_s + p.imagery_eval_s + p.imagery_rest_s
    trial_vols = trial_s / p.tr_s
    if abs(trial_vols - round(trial_vols)) > 1e-9:
        raise ValueError(f"an imagery trial ({trial_s:g} s) must last a whole number of TRs ({p.tr_s:g} s)")
    cats = subject.test_categories
    order = np.concatenate([rng.permutation(cats) for _ in range(p.imagery_trials_per_category)])
    n_vols = p.baseline_volumes + len(order) * round(trial_vols) + p.tail_volumes
    cue_on = p.baseline_volumes * p.tr_s + np.arange(len(order)) * trial_s
    imagery_on = cue_on + p.imagery_cue_s
    bank = subject.bank
    feats = {layer: bank.category_features[layer][order] for layer in bank.layers}
    vividness = rng.lognormal(0.0, p.imagery_vividness_sd, len(order))
    resp = voxel_responses(subject, feats) * vividness[:, None] * voxel_gain(p, subject)
    signal = boxcar_response(cue_on, p.imagery_cue_s, n_vols, p.tr_s).sum(1, keepdims=True) * p.visual_on_pct
    signal = np.repeat(signal, subject.voxel_index.size, axis=1)
    for li, delay in enumerate(layer_delays_s(p, len(bank.layers))):
        sel = subject.voxel_layer == li
        signal[:, sel] += boxcar_response(imagery_on + delay, p.imagery_s, n_vols, p.tr_s) @ resp[:, sel]
    events = []
    for t, (cue, on, c) in enumerate(zip(cue_on, imagery_on, order)):
        common = {"category_index": int(c), "category_label": bank.labels[c], "block": t}
        events.append({"onset": float(cue), "duration": p.imagery_cue_s, "trial_type": "cue", **common})
        events.append({"onset": float(on), "duration": p.imagery_s, "trial_type": "imagery", **common})
    return n_vols, signal, events, feats
