"""What a processed volume or block becomes on the wire: the declared messages, in publishing order."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from rtdecode.pipeline.blocks import BlockResult
from rtdecode.pipeline.chain import Pipeline, Result
from rtdecode.pipeline.latency import stage_durations_ms
from rtdecode.volume import Stage, Volume, stamp, stamps_to_dict
from rtdecode.wire import messages as m


def _json_number(v: float) -> float | None:
    # JSON has no NaN: a score that cannot be computed yet travels as null.
    return None if math.isnan(v) else v


def _scores(scores: Mapping[str, tuple[float, float]]) -> dict:
    return {n: {"raw": _json_number(raw), "value": _json_number(val)} for n, (raw, val) in scores.items()}


def _top_labels(labels: list[str], indices: np.ndarray) -> list:
    return [[[labels[j] for j in row] for row in per_roi] for per_roi in indices]


def result_messages(
    res: Result,
    pipe: Pipeline,
    scores: Mapping[str, tuple[float, float]] | None = None,
    stamps_dropped: list[str] | None = None,
) -> list[m.WireMessage]:
    """Motion, features, ranking, feedback, quality and latency of one volume, in publishing order.

    The ``PUBLISHED`` stamp is set here, so the latency message (the last) carries it.
    """
    vol = res.volume
    base = {**m.volume_ref(vol), "tr_s": vol.tr_s, "status": res.status}
    censored = bool(res.motion.censored) if res.motion is not None else False
    stamp(vol.stamps, Stage.PUBLISHED)
    out: list[m.WireMessage] = []
    if res.motion is not None:
        out.append(
            m.Motion(
                **base,
                params=res.motion.params.tolist(),
                fd_mm=res.motion.fd_mm,
                censored=censored,
                fd_threshold_mm=pipe.motion.fd_threshold_mm,
                iterations=res.motion.iterations,
            )
        )
    if res.status == "ok":
        dec = pipe.decoder
        for i, roi in enumerate(dec.roi_names):
            for layer, sl in dec.layer_slices.items():
                out.append(m.Features(**base, roi=roi, layer=layer, features=res.predictions[i, sl]))
        out.append(
            m.Ranking(
                **base,
                censored=censored,
                rois=dec.roi_names,
                layers=dec.layers,
                labels=_top_labels(pipe.identifier.bank.labels, res.top_indices),
                indices=res.top_indices,
                scores=res.top_scores,
            )
        )
    else:
        out.append(m.Ranking(**base, censored=censored))
    if scores:
        out.append(m.Feedback(**base, scores=_scores(scores)))
    if (q := res.quality) is not None:
        out.append(
            m.Qa(
                **base,
                fd_mm=None if res.motion is None else res.motion.fd_mm,
                spikes=res.spikes,
                dvars_pct=q.dvars_pct,
                global_signal=q.global_signal,
                tsnr=q.tsnr,
                frames_under=q.frames_under,
                clean_minutes=q.clean_minutes,
                projected_clean_minutes=q.projected_clean_minutes,
            )
        )
    durations = stage_durations_ms(vol.stamps)
    out.append(
        m.Latency(
            **base,
            stamps=stamps_to_dict(vol.stamps),
            ms=durations,
            stamps_dropped=stamps_dropped,
            export_ms=durations.get("acquired->file_complete"),
            acquired_from=vol.acquired_from or None,
        )
    )
    return out


def block_message(
    block: BlockResult, last: Volume, pipe: Pipeline, scores: Mapping[str, tuple[float, float]]
) -> m.Block:
    """A block's volumes, ranking and feedback scores (so far, while it runs)."""
    b, dec = block.block, pipe.decoder
    msg = m.Block(
        **m.volume_ref(last),
        block=b.index,
        label=b.label,
        condition=b.condition,
        onset_s=b.onset_s,
        offset_s=b.offset_s,
        running=True if block.running else None,
        seqs=block.seqs,
        status=block.status,
        rois=dec.roi_names,
        layers=dec.layers,
        feedback=_scores(scores),
    )
    if block.predictions is not None:
        msg.labels = _top_labels(pipe.identifier.bank.labels, block.top_indices)
        msg.indices, msg.scores, msg.predictions = block.top_indices, block.top_scores, block.predictions
        if block.label_rank is not None:
            msg.label_rank = block.label_rank.tolist()
            msg.label_correlation = np.round(block.label_correlation.astype(float), 6).tolist()
    return msg
