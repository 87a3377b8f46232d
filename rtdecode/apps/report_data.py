"""The report's images of the data, and the decoder's per-volume quality.

Images: mean EPI with the ROI outlines, a carpet plot, a tSNR map.
The volumes come from the recording (``run.publish_input``) or the series' NIfTI (``--bold``);
the ROIs and the reference from the decoder bundle the recording names. Whatever is missing is
said, not guessed.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from rtdecode.apps.report_plots import ROI_ORDER, html_table, roi_order, svg
from rtdecode.errors import ModelFileError, RecordingError
from rtdecode.io.recording import Recording, input_volumes

# Axial slices shown in the mosaics.
N_SLICES = 6


def _volumes(rec: Recording, bold: str | Path | None) -> tuple[np.ndarray | None, str]:
    """The series as (x, y, z, t) float32, and where it came from."""
    try:
        vols = [v.data for v in input_volumes(rec.path)]
        return np.stack(vols, axis=-1).astype(np.float32), "the volumes stored in the recording"
    except RecordingError:
        pass
    if bold is not None:
        import nibabel as nib

        return np.asarray(nib.load(str(bold)).dataobj, dtype=np.float32), str(Path(bold).resolve())
    return None, ""


def _rois(rec: Recording) -> tuple[np.ndarray | None, dict[str, np.ndarray], np.ndarray | None]:
    """The bundle's analysis mask, its ROI masks and its motion reference, where they can be read."""
    from rtdecode.models.bundle import load_bundle

    bundle = rec.settings.get("bundle")
    if not bundle:
        return None, {}, None
    try:
        b = load_bundle(bundle)
    except ModelFileError:
        return None, {}, None
    masks = {}
    where = np.flatnonzero(b.mask)
    for name in roi_order(b.rois):
        m = np.zeros(b.mask.size, bool)
        m[where[b.rois[name]]] = True
        masks[name] = m.reshape(b.mask.shape)
    ref_path = Path(bundle) / "reference.nii.gz"
    reference = None
    if ref_path.exists():
        import nibabel as nib

        reference = np.asarray(nib.load(str(ref_path)).dataobj, dtype=np.float32)
    return b.mask, masks, reference


def _mosaic(fig: Figure, image: np.ndarray, slices: np.ndarray, title: str, outlines=None, **imshow) -> None:
    axes = fig.subplots(1, len(slices))
    for ax, z in zip(np.atleast_1d(axes), slices):
        im = ax.imshow(image[:, :, z].T, origin="lower", **imshow)
        for k, m in enumerate((outlines or {}).values()):
            if m[:, :, z].any():
                ax.contour(m[:, :, z].T, levels=[0.5], colors=[f"C{k % 10}"], linewidths=0.7)
        ax.set_title(f"z {z}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return im


def data_section(rec: Recording, bold: str | Path | None = None) -> str:
    """Mean EPI with ROI outlines, a carpet plot of the ROI voxels under FD, and a tSNR map."""
    data, source = _volumes(rec, bold)
    mask, masks, reference = _rois(rec)
    if data is None and reference is None:
        return (
            "<p>No images: the recording holds no volumes (record with <code>run.publish_input</code>) "
            "and no decoder bundle with a reference was found; pass <code>--bold SERIES.nii</code>.</p>"
        )
    mean = data.mean(axis=-1) if data is not None else reference
    if mask is not None and mask.shape != mean.shape:
        masks, mask = {}, None
        note = "<p>The bundle's ROIs are on another grid than these volumes: shown without outlines.</p>"
    else:
        note = ""
    zs = np.flatnonzero(mask.any(axis=(0, 1))) if mask is not None else np.arange(mean.shape[2])
    slices = np.unique(np.linspace(zs.min(), zs.max(), N_SLICES).round().astype(int))
    singles = {k: v for k, v in masks.items() if k in ROI_ORDER[:7]} or masks
    fig = Figure(figsize=(9, 2.2))
    _mosaic(fig, mean, slices, "mean EPI" + (" and ROIs: " + ", ".join(singles) if singles else ""), singles,
            cmap="gray")  # fmt: skip
    text = f"<p>Volumes: {html.escape(source or 'none; the decoder reference image')}.</p>{note}" + svg(fig)
    if data is None:
        return text + "<p>No time series: no carpet plot or tSNR map.</p>"
    roi = "VC" if "VC" in masks else (next(iter(masks)) if masks else None)
    vox = masks[roi] if roi else (mean > np.percentile(mean, 75))
    series = data[vox]  # (voxels, time)
    sd = series.std(axis=1, keepdims=True)
    carpet = (series - series.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1)
    fig = Figure(figsize=(9, 4))
    ax_fd, ax_c = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 3]})
    t = np.arange(data.shape[-1])
    if rec.fd_mm is not None:
        n = min(t.size, rec.fd_mm.size)
        ax_fd.plot(t[:n], rec.fd_mm[:n], lw=1, color="k")
        cens = np.flatnonzero(rec.censored[:n])
        ax_fd.plot(cens, rec.fd_mm[cens], "o", color="tab:red", ms=3, label="censored")
        if rec.fd_threshold_mm:
            ax_fd.axhline(rec.fd_threshold_mm, color="0.5", ls="--", lw=1)
    ax_fd.set_ylabel("FD (mm)", fontsize=8)
    ax_c.imshow(carpet, aspect="auto", cmap="gray", vmin=-2, vmax=2, interpolation="nearest")
    ax_c.set_ylabel(f"{roi or 'bright'} voxels ({vox.sum()})", fontsize=8)
    ax_c.set_xlabel("volume")
    fig.tight_layout()
    text += "<h3>Carpet plot</h3><p>Each row a voxel's signal, z-scored; FD above, censored volumes red.</p>"
    text += svg(fig)
    sd = data.std(axis=-1)
    tsnr = np.where(sd > 0, mean / np.where(sd > 0, sd, 1), 0)
    fig = Figure(figsize=(9, 2.4))
    im = _mosaic(fig, tsnr, slices, "tSNR (mean / standard deviation over time)", cmap="viridis", vmin=0,
                 vmax=float(np.percentile(tsnr[tsnr > 0], 99)) if (tsnr > 0).any() else 1)  # fmt: skip
    fig.colorbar(im, ax=fig.axes, shrink=0.8)
    inside = tsnr[mask] if mask is not None else tsnr[tsnr > 0]
    text += f"<h3>tSNR</h3><p>Median tSNR in the decoder's mask: {np.median(inside):.1f}.</p>" + svg(fig)
    return text


def quality_section(rec: Recording) -> str:
    """The decoder's per-volume quality (topic ``qa``): DVARS, global signal, spikes, tSNR, FIRMM."""
    q = rec.qa
    if "dvars_pct" not in q:
        return "<p>No quality figures in this recording (written before topic <code>qa</code>).</p>"
    n = min(len(rec.seq), len(q["dvars_pct"]))
    t, cens = rec.times_s[:n], rec.censored[:n]
    spikes = q["spikes"][:n] if "spikes" in q else np.full(n, -1)
    rows = [("DVARS (% of mean)", q["dvars_pct"][:n])]
    if "global_signal" in q:
        g = q["global_signal"][:n]
        rows.append(("global signal (% change)", 100 * (g / g[0] - 1) if g[0] else g))
    if (spikes >= 0).any():
        rows.append(("voxels despiked", np.where(spikes >= 0, spikes, np.nan)))
    fig = Figure(figsize=(9, 1.9 * len(rows)))
    axes = np.atleast_1d(fig.subplots(len(rows), 1, sharex=True))
    for ax, (label, values) in zip(axes, rows):
        ax.plot(t, values, lw=1, color="k")
        if cens.any():
            ax.plot(t[cens], values[cens], "o", color="tab:red", ms=3, label="censored")
            ax.legend(loc="upper left", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("scan time (s)" if rec.tr_s else "volume")
    facts = [["median DVARS", f"{np.nanmedian(q['dvars_pct'][:n]):.2f} % of mean"]]
    if (spikes >= 0).any():
        total, volumes = int(spikes[spikes >= 0].sum()), int((spikes > 0).sum())
        facts.append(["voxels despiked", f"{total} in {volumes} volumes"])
    if rec.fd_mm is not None:
        fd = np.nan_to_num(rec.fd_mm[:n])
        under = ", ".join(f"≤ {lv} mm {100 * np.mean(fd <= lv):.0f} %" for lv in (0.2, 0.3, 0.5))
        facts.append(["frames by FD (FIRMM)", under])
    if "clean_minutes" in q:
        facts.append(["clean data (not censored)", f"{q['clean_minutes'][n - 1]:.1f} min"])
    if "tsnr" in q and rec.qa_rois:
        last = q["tsnr"][n - 1]
        tsnr = dict(zip(rec.qa_rois, last))
        cells = ", ".join(f"{html.escape(r)} {tsnr[r]:.1f}" for r in roi_order(tsnr) if np.isfinite(tsnr[r]))
        facts.append(["tSNR at the end (median over ROI)", cells or "–"])
    return svg(fig) + html_table(["", ""], facts, "facts")
