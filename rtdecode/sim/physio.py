"""Simulated cardiac and respiratory recordings and the BOLD noise they cause.

Models (documented in docs/simulator.md):

* Heart: the rate wanders around 66 bpm (Ornstein-Uhlenbeck, sd 4 bpm, 20 s); the beats are where
  the integrated rate crosses whole cycles. The recorded trace is a pulse oximeter's: a systolic
  wave 0.2 of a cycle after the beat and a dicrotic one after it, plus noise.
* Breathing: the rate wanders around 16 breaths per minute (sd 2, 30 s), the depth log-normally
  (sd 0.25, 20 s); the belt reads ``−depth · cos θ`` plus noise, θ the breathing cycle's phase.
  RVT (depth × rate, relative to its mean) follows from them.
* BOLD: each voxel's fractional change is a Fourier series of orders 1 and 2 of the cardiac phase
  and of θ at the voxel's acquisition time (slice time), with random coefficients (Glover et al.
  2000), plus RVT convolved with the respiration response function (Birn et al. 2008) times a
  weight of one sign everywhere (mean 1, SD 0.5, times the tissue's gain). ``physio_pct`` is the
  standard deviation of the sum in grey matter, split equally between the three; white matter has
  half of it, CSF twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rtdecode.numerics.response import rrf

FS_HZ = 100.0
LEAD_S = 30.0  # the recording starts this long before the first volume
_TISSUE_GAIN = {"gm": 1.0, "wm": 0.5, "csf": 2.0}


def _wander(rng: np.random.Generator, n: int, dt: float, tau_s: float) -> np.ndarray:
    # A unit-variance Ornstein-Uhlenbeck process.
    a = np.exp(-dt / tau_s)
    out = np.empty(n)
    out[0] = rng.standard_normal()
    steps = rng.standard_normal(n) * np.sqrt(1 - a * a)
    for i in range(1, n):
        out[i] = a * out[i - 1] + steps[i]
    return out


def simulate_recording(duration_s: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The traces from ``−LEAD_S`` to ``duration_s`` (s, 0 = the first volume) at ``FS_HZ``.

    Returns
    -------
    dict
        ``time``, ``cardiac`` (pulse oximeter), ``respiratory`` (belt), ``beats`` (times of the
        heart beats), ``breath_phase`` (θ, rad) and ``rvt`` (relative to its mean, minus 1).
    """
    dt = 1 / FS_HZ
    t = np.arange(-LEAD_S, duration_s, dt)
    bpm = 66 + 4 * _wander(rng, t.size, dt, 20.0)
    cycles = np.cumsum(bpm / 60 * dt)
    beats = np.interp(np.arange(np.ceil(cycles[0]), cycles[-1]), cycles, t)
    u = np.mod(cycles, 1.0)
    ppg = np.exp(-0.5 * ((u - 0.2) / 0.08) ** 2) + 0.4 * np.exp(-0.5 * ((u - 0.45) / 0.1) ** 2)
    rate = (16 + 2 * _wander(rng, t.size, dt, 30.0)) / 60
    theta = 2 * np.pi * np.cumsum(rate * dt)
    depth = np.exp(0.25 * _wander(rng, t.size, dt, 20.0))
    belt = -depth * np.cos(theta)
    rvt = depth * rate
    return {
        "time": t,
        "cardiac": ppg + 0.03 * rng.standard_normal(t.size),
        "respiratory": belt + 0.02 * rng.standard_normal(t.size),
        "beats": beats,
        "breath_phase": theta,
        "rvt": rvt / rvt.mean() - 1,
    }


def write_physio(path: str | Path, recording: dict[str, np.ndarray]) -> Path:
    """Write ``time``, ``cardiac`` and ``respiratory`` (evenly sampled) as a BIDS recording.

    As :func:`rtdecode.io.physio.read_physio` reads it: the TSV and its JSON sidecar.
    """
    path = Path(path)
    t = recording["time"]
    np.savetxt(path, np.column_stack([recording[c] for c in ("cardiac", "respiratory")]), "%.6g", "\t")
    sidecar = {"SamplingFrequency": round(float((t.size - 1) / (t[-1] - t[0])), 6), "StartTime": float(t[0])}
    sidecar["Columns"] = ["cardiac", "respiratory"]
    path.with_name(path.name.removesuffix(".gz").removesuffix(".tsv") + ".json").write_text(
        json.dumps(sidecar)
    )
    return path


class PhysioNoise:
    """BOLD fractional change from a recording's heart and breathing, voxel by voxel (see the module).

    Parameters
    ----------
    recording : dict
        :func:`simulate_recording`'s.
    tissue : numpy.ndarray
        str per voxel: ``gm``, ``wm`` or ``csf``.
    physio_pct : float
        Standard deviation in grey matter, %.
    tr_s : float
    rng : numpy.random.Generator
    """

    def __init__(
        self, recording: dict, tissue: np.ndarray, physio_pct: float, tr_s: float, rng: np.random.Generator
    ) -> None:
        self.rec = recording
        gain = np.array([_TISSUE_GAIN[k] for k in tissue]) * physio_pct / 100 / np.sqrt(3)
        # Four Fourier terms of unit-variance coefficients have variance 2 (cos² and sin² average 1/2).
        self.coef = rng.standard_normal((tissue.size, 8)) * (gain / np.sqrt(2))[:, None]
        t = recording["time"]
        dt = 1 / FS_HZ
        kernel = rrf(np.arange(0, 40.0, dt)) * dt
        conv = np.convolve(recording["rvt"], kernel)[: t.size]
        conv /= conv[t >= 0].std() or 1.0
        self._rvt_conv = conv
        # Breathing changes arterial CO2 and so blood flow everywhere the same way (Birn et al.
        # 2006): the weights share a sign, varying in size.
        self.rvt_weight = (1 + 0.5 * rng.standard_normal(tissue.size)) * gain

    def at(self, t_s: np.ndarray) -> np.ndarray:
        """Fractional change of each voxel at its own time ``t_s`` (per voxel, s)."""
        t_s = np.asarray(t_s, np.float64)
        beats = self.rec["beats"]
        k = np.clip(np.searchsorted(beats, t_s, side="right") - 1, 0, beats.size - 2)
        phase_c = 2 * np.pi * (t_s - beats[k]) / (beats[k + 1] - beats[k])
        phase_r = np.interp(t_s, self.rec["time"], self.rec["breath_phase"])
        basis = np.stack(
            [f(m * p) for p in (phase_c, phase_r) for m in (1, 2) for f in (np.cos, np.sin)], axis=-1
        )
        rvt = np.interp(t_s, self.rec["time"], self._rvt_conv)
        return (basis * self.coef).sum(-1) + rvt * self.rvt_weight
