"""The demo's imagery part: GOD's imagery run decoded with the perception-trained decoders.

The simulated subject imagines each test category (never trained on) after a cue; the series goes
through the same pipeline as the live session (:func:`rtdecode.apps.batch.decode_series`) and is
scored as the Kamitani lab scores it: identification per category among the test and unseen
categories, accuracy per TR from the cue and, when the best candidates miss, how often they share
the true category's superclass.

Each layer's peak is checked against the simulation's own: the same run rendered without noise,
motion or drift and decoded by the same decoders. That reference keeps what the decoders make of
the simulated top-down delays — a layer's decoder also reads voxels tuned to neighbouring layers,
so its time course mixes their delays — and leaves out only what noise does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from rtdecode.apps.batch import decode_series
from rtdecode.apps.report import write_report
from rtdecode.config import Config, RunConfig
from rtdecode.models.bank import CandidateBank
from rtdecode.offline import evaluate as ev
from rtdecode.offline.semantic import session_groups
from rtdecode.sim.imagery import layer_delays_s
from rtdecode.sim.session import SimParams, Subject, simulate_session, write_session


def run_imagery(
    cfg: Config, run_cfg: RunConfig, out: Path, p: SimParams, subject: Subject, perception_recording: Path
) -> dict:
    """Simulate, decode and score the imagery run; return the summary's ``imagery`` section.

    Parameters
    ----------
    p : SimParams
        The test session's parameters (the imagery run uses ``kind="imagery"`` and its own seed).
    perception_recording : Path
        The perception test session's recording, for its semantic rates beside imagery's.
    """
    p_img = dataclasses.replace(p, kind="imagery", seed=p.seed + 100)
    p_ref = dataclasses.replace(p_img, noiseless=True, motion=False, drift_pct=0.0)  # the same trials
    offline = dataclasses.replace(run_cfg, blocks=dataclasses.replace(run_cfg.blocks, enabled=False))
    bank = CandidateBank.load(out / "decoder" / "candidates.npz")
    bank = bank.without(ev.training_labels(out / "test"))  # the subject's, as in every session
    groups = session_groups(out / "test", bank)
    shift = cfg.train.hrf_shift_s
    lags = np.arange(-3.0, 24.0 + 1e-9, p.tr_s)
    results = {}
    for name, params in (("imagery", p_img), ("imagery-noiseless", p_ref)):
        write_session(out / name, params, simulate_session(params, subject))
        decode_series(offline, out / name / "bold.nii", out / f"{name}.h5")
        rec = out / f"{name}.h5"
        results[name] = ev.evaluate_session(rec, out / name, bank, shift, groups=groups, lags_s=lags)
    res, recording = results["imagery"], out / "imagery.h5"
    report = write_report(recording, out / "imagery-report.html", out / "imagery" / "events.tsv",
                          out / "decoder" / "candidates.npz", shift)  # fmt: skip
    per_layer = res["identification"]["VC"]
    peaks = res["time_course"]["peak_s"]["VC"]
    reference = results["imagery-noiseless"]["time_course"]["peak_s"]["VC"]
    layers = list(per_layer)
    off = {ly: abs(peaks[ly] - reference[ly]) for ly in layers}
    imagined = res["semantic"].get("VC", {})
    seen = ev.evaluate_session(perception_recording, out / "test", bank, shift, groups=groups)["semantic"]
    rois = res["time_course"]["peak_s"]  # per ROI: when higher and lower areas peak
    return {
        "report": str(report),
        "n_trials": len(ev.block_truth(out / "imagery" / "events.tsv", bank)[2]),
        "n_candidates": len(bank.labels),
        "identification_accuracy": {
            "roi": "VC",
            "mean": float(np.mean(list(per_layer.values()))),
            "per_layer": per_layer,
            "per_roi": res["identification"],
            "chance": 0.5,
        },
        "time_course": {
            "roi": "VC",
            "lags_s": res["time_course"]["lags_s"],
            "identification": {ly: v["identification"] for ly, v in res["time_course"]["rois"]["VC"].items()},
            "peak_s": peaks,
            "simulated_peak_s": reference,
            "within_one_tr": all(v <= p.tr_s for v in off.values()),
            "off_by_s": off,
            "simulated_layer_delay_s": dict(zip(layers, layer_delays_s(p_img, len(layers)).tolist())),
            "mean_peak_s": {r: float(np.nanmean(list(rois[r].values()))) for r in ("HVC", "LVC")},
        },
        "semantic": {
            "top1_superclass_rate": imagined.get("top1_rate"),
            "top5_superclass_rate": imagined.get("top5_rate"),
            "chance": imagined.get("chance"),
            "perception": seen.get("VC", {}),
        },
    }


def print_imagery(s: dict, perception_mean: float) -> None:
    """Print the imagery section of the summary."""
    ia = s["identification_accuracy"]
    print(
        f"\nimagery: {s['n_trials']} trials imagining categories never trained on, {s['n_candidates']} "
        f"candidates; pairwise identification (VC, per category; perception above {perception_mean:.3f}):"
    )
    print("  " + "".join(f"{ly:>7}" for ly in ia["per_layer"]) + f"{'mean':>7}")
    print("  " + "".join(f"{v:>7.2f}" for v in ia["per_layer"].values()) + f"{ia['mean']:>7.2f}")
    tc = s["time_course"]
    print(
        "  peak of identification after the cue (s):   "
        + "  ".join(f"{ly} {t:4.1f}" for ly, t in tc["peak_s"].items())
    )
    print(
        "  the simulation's own (noiseless, same trials): "
        + "  ".join(f"{ly} {t:4.1f}" for ly, t in tc["simulated_peak_s"].items())
    )
    print(
        f"  every layer within one TR of the simulation's peak: {tc['within_one_tr']} (largest "
        f"difference {max(tc['off_by_s'].values()):.1f} s); mean peak "
        + ", ".join(f"{r} {t:.1f} s" for r, t in tc["mean_peak_s"].items())
    )
    sem = s["semantic"]
    print(
        f"  when the best candidates miss: top-1 {sem['top1_superclass_rate']:.3f}, top-5 "
        f"{sem['top5_superclass_rate']:.3f} of them share the true category's superclass (chance "
        f"{sem['chance']:.3f}); perception top-5 {sem['perception'].get('top5_rate', float('nan')):.3f}"
    )
