"""The demo's summary: the decoder's live block results scored, and everything printed for the user."""

from __future__ import annotations

import numpy as np

from rtdecode.pipeline.latency import format_table


def live_block_summary(blocks: list[dict], roi: str, events: list[dict[str, str]], n_candidates: int) -> dict:
    """The decoder's own block results (from LSL markers), checked against the events table."""
    if not blocks:
        return {}
    ranks = np.array(
        [b["label_rank"][b["rois"].index(roi)] for b in blocks if b.get("label_rank") is not None]
    )
    truth = [e["category_label"] for e in events]
    return {
        "n_blocks": len(blocks),
        "n_events": len(events),
        "labels_match_events": [b["label"] for b in blocks] == truth[: len(blocks)],
        "roi": roi,
        "mean_label_rank": float(ranks.mean()) if ranks.size else None,
        "pairwise_identification": float(np.mean(1 - (ranks - 1) / (n_candidates - 1)))
        if ranks.size
        else None,
    }


def print_summary(s: dict) -> None:
    """Print the demo's results the way a user wants to read them."""
    sim = s["simulation"]
    print("\n=== rtdecode demo ===")
    print(
        f"simulated: {sim['shape']} voxels of {sim['voxel_size_mm']} mm, TR {sim['tr_s']} s, "
        f"tSNR {sim['tsnr']:g}, "
        f"{sim['tuned_fraction']:.0%} of visual voxels tuned at {sim['tuned_change_pct'][0]:g}-"
        f"{sim['tuned_change_pct'][1]:g} % signal change (the rest {sim['weak_change_pct'][0]:g}-"
        f"{sim['weak_change_pct'][1]:g} %), head motion up to {sim['max_translation_mm']:g} mm / "
        f"{sim['max_rotation_deg']:g} deg"
    )
    ia = s["identification_accuracy"]
    print(
        f"\ntop-5 categories per test block ({ia['roi']}, correlation averaged over layers), first 10 blocks:"
    )
    for b in s["blocks"][:10]:
        mark = "HIT " if b["truth_in_top5"] else "    "
        print(f"  {mark}block {b['block']:3d} truth {b['truth']}: " + ", ".join(b["top5"]))
    print(
        f"  truth in top 5 of {ia['n_candidates']}: {s['top5_hit_rate']:.0%} of {ia['n_blocks']} blocks "
        f"(chance {5 / ia['n_candidates']:.1%})"
    )
    print(
        f"\npairwise identification accuracy, {ia['n_blocks']} test blocks of categories never trained on, "
        f"{ia['n_candidates']} candidates (chance 0.5):"
    )
    layers = list(ia["per_layer"])
    print(f"  {'ROI':<5}" + "".join(f"{ly:>7}" for ly in layers) + f"{'mean':>7}")
    for roi, accs in ia["per_roi"].items():
        print(
            f"  {roi:<5}"
            + "".join(f"{accs[ly]:>7.2f}" for ly in layers)
            + f"{np.mean(list(accs.values())):>7.2f}"
        )
    print(f"  mean over layers ({ia['roi']}): {ia['mean']:.3f}")
    v = s["volumes"]
    print(
        f"\nvolumes: {v['sent']} sent, {v['processed']} processed, {v['skipped']} skipped, "
        f"{v['received_by_subscriber']} results received, {v['censored']} censored for motion"
    )
    lb = s.get("live_blocks")
    if lb:
        print(
            f"\nlive block decoding from LSL markers: {lb['n_blocks']} block results for "
            f"{lb['n_events']} blocks (labels match the events: {lb['labels_match_events']}); "
            f"{lb['roi']} pairwise identification {lb['pairwise_identification']:.3f} (mean over layers; "
            f"the evaluation above: {s['identification_accuracy']['mean']:.3f}), mean rank of the truth "
            f"{lb['mean_label_rank']:.1f} of {s['identification_accuracy']['n_candidates']}"
        )
    if s["latency_ms"]:
        hop = "acquired->received is the LSL hop; " if s.get("transport") == "lsl" else ""
        print(f"\nlatency per stage and end to end (acquisition -> published; {hop}ms):")
        print(format_table(s["latency_ms"]))
    if "imagery" in s:
        from rtdecode.apps.demo_imagery import print_imagery

        print_imagery(s["imagery"], s["identification_accuracy"]["mean"])
    rc = s.get("reconstruction")
    if rc and rc.get("n_blocks"):
        print(
            f"\nreconstructions (feature inversion of VC, EfficientNet-lite0): {rc['n_blocks']} blocks, "
            f"{rc['seconds']['p50']:.1f} s per image (max {rc['seconds']['max']:.1f} s, "
            f"{rc['iterations_p50']:.0f} steps); pairwise identification by pixels among the "
            f"{rc['n_photographs']} photographs {rc['pixel_identification']:.2f} (chance 0.5)"
        )
    print(f"\nrecording: {s['recording']}\nreport: {s['report']} (open it in a browser)")
