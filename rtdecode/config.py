"""The configuration: one YAML file with sections ``simulate``, ``train``, ``run`` and ``demo``.

Every section is a dataclass, declared here with its defaults; :mod:`rtdecode.configfile` reads a
file or data into them and checks every key and value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Feedback scores computed from the decoded content (against a target category), then the others.
CONTENT_FEEDBACK_KINDS = ("correlation", "rank", "softmax")
FEEDBACK_KINDS = (*CONTENT_FEEDBACK_KINDS, "psc", "classifier")
NORMALISATIONS = ("baseline-detrend", "baseline", "training")  # run.preprocess.normalise
HRF_SHIFT_S = 6.0  # the hemodynamic delay blocks are shifted by, seconds (Horikawa & Kamitani 2017)


@dataclass
class SocketConfig:
    """A ZeroMQ endpoint: ``address`` such as ``tcp://127.0.0.1:5555``; ``bind`` or connect."""

    address: str = "tcp://127.0.0.1:5555"
    bind: bool = True
    max_message_mb: float = 256.0  # the volume input refuses larger messages (drops the connection)


@dataclass
class CurveConfig:
    """CurveZMQ on the decoder's sockets (keys from ``rtdecode keygen``)."""

    enabled: bool = False
    secret_key: str = ""  # the decoder's .key_secret file
    clients: str = ""  # directory of allowed client public keys (.key files)


@dataclass
class MotionConfig:
    """Motion correction stage (see :class:`rtdecode.pipeline.motion.MotionCorrector`)."""

    enabled: bool = True
    reference: str = ""  # a NIfTI volume; empty: the first volume(s) of the series
    n_reference: int = 1
    fd_threshold_mm: float = 0.5
    threads: int = 1  # 2: each volume's reslicing coefficients on a second thread while its pose is estimated


# run.preprocess.nuisance.regressors
NUISANCE_REGRESSORS = (
    "drift", "motion", "motion_derivatives", "global", "wm", "csf", "acompcor", "retroicor", "rvt"
)  # fmt: skip


@dataclass
class DespikeConfig:
    """Causal despiking (see :class:`rtdecode.pipeline.denoise.Despiker`)."""

    enabled: bool = False
    threshold: float = 4.0  # running SDs from the running level
    tau_s: float = 30.0  # time constant of the running level and SD


@dataclass
class NuisanceConfig:
    """Nuisance regression, recursive least squares (:class:`rtdecode.pipeline.denoise.NuisanceRegressor`)."""

    regressors: list[str] = field(default_factory=list)  # some of NUISANCE_REGRESSORS; [] off
    penalty: float = 1.0  # ridge prior on the nuisance coefficients, in volumes' worth
    # wm, csf, acompcor: masks on the decoders' grid; "" for <bundle>/wm_mask.nii.gz, csf_mask.nii.gz
    wm_mask: str = ""
    csf_mask: str = ""
    compcor_components: int = 5  # aCompCor: principal components of WM + CSF over the baseline volumes

    @property
    def masks_needed(self) -> tuple[str, ...]:
        """The tissue masks the regressors read, in order: ``wm``, ``csf`` (aCompCor needs both)."""
        return tuple(t for t in ("wm", "csf") if t in self.regressors or "acompcor" in self.regressors)


@dataclass
class PhysioConfig:
    """Cardiac and respiratory recordings, for the retroicor and rvt regressors (pipeline.physio)."""

    stream: str = ""  # live: the LSL stream of type "physio" of this name; "" the first found
    file: str = ""  # offline: a BIDS _physio.tsv.gz; "" the one beside the series (<stem>_physio.tsv.gz)
    window_s: float = 120.0  # seconds of recording that beats, breaths and the belt's histogram come from
    max_wait_s: float = 1.0  # live: wait this long for samples up to a volume's end, then go on without


@dataclass
class PreprocessConfig:
    """Causal preprocessing (see :class:`rtdecode.pipeline.preprocess.Preprocessor`)."""

    baseline_volumes: int = 8
    detrend_tau_s: float = 60.0
    # "baseline-detrend"; "baseline": the lab's per-run z-score; "training": an imported model's own
    normalise: str = "baseline-detrend"
    slice_timing: bool = False  # correct each slice to the first's time (slice times from the headers)
    despike: DespikeConfig = field(default_factory=DespikeConfig)  # before the nuisance regression
    smoothing_fwhm_mm: float = 0.0  # Gaussian inside the analysis mask, after despiking; 0 off
    nuisance: NuisanceConfig = field(default_factory=NuisanceConfig)


@dataclass
class LslConfig:
    """Lab Streaming Layer endpoints (stream layouts in ``docs/protocol.md``)."""

    outputs: bool = False  # publish every result on LSL streams too
    prefix: str = "rtdecode"  # output stream names start with this
    volume_stream: str = ""  # with run.transport "lsl": only a volume stream of this name
    marker_stream: str = ""  # with run.blocks.enabled: only a marker stream of this name


@dataclass
class BlocksConfig:
    """Block decoding from stimulus markers (see :mod:`rtdecode.pipeline.blocks`)."""

    enabled: bool = False  # listen for LSL markers and decode each marked block
    hrf_shift_s: float = HRF_SHIFT_S
    running: bool = True  # also publish a block's ranking after each of its volumes while it runs
    # Per condition, [from_s, to_s] after the start marker instead of start..end marker, e.g.
    # {imagery: [3, 18]} when the stimulus program marks a whole GOD imagery trial from its cue.
    windows: dict = field(default_factory=dict)


@dataclass
class FeedbackConfig:
    """One neurofeedback score (see :mod:`rtdecode.pipeline.feedback`)."""

    name: str = "feedback"
    kind: str = "correlation"  # one of FEEDBACK_KINDS
    roi: str = "VC"
    layer: str = "cnn8"  # decoded-content kinds
    target: str = ""  # decoded-content kinds: a candidate label
    temperature: float = 0.05  # softmax
    classifier: str = ""  # kind classifier: a classifier file; "" for <bundle>/classifier.json
    normalise: str = "none"  # none | zscore (against the scores of the first baseline_volumes)
    baseline_volumes: int = 10
    smoothing_volumes: float = 0.0  # exponential smoothing time constant in volumes; 0: none


@dataclass
class RunConfig:
    """The real-time decoder."""

    transport: str = "zmq"  # where volumes come from: zmq (run.input) or lsl (a stream of type fMRI)
    input: SocketConfig = field(default_factory=SocketConfig)
    output: SocketConfig = field(default_factory=lambda: SocketConfig("tcp://127.0.0.1:5556", True))
    # The session so far, for a subscriber that starts late (rtdecode dashboard --history); "" off.
    history: SocketConfig = field(default_factory=lambda: SocketConfig("", True))
    bundle: str = ""  # the decoder bundle directory (required by rtdecode run and offline)
    candidates: str = ""  # default: <bundle>/candidates.npz
    top_k: int = 5
    rank_precision: str = "int8"  # int8: certified int8 pre-ranking, same result as float32, 1/4 the reads
    rank_threads: int = 1  # threads ranking a volume's layers, the caller's included (2 on two cores)
    decode_threads: int = 1  # threads decoding a volume's ROIs and weight pieces, the caller's included
    batch_volumes: int = 16  # volumes already waiting are decoded and ranked together, up to this many
    heartbeat_s: float = 0.5
    pause_trs: float = 10.0  # no volume for this many TRs: announce a scanner pause (status "paused")
    reorder_ms: float = 100.0  # hold a volume that follows a gap this long, for late ones to catch up
    publish_input: bool = False  # republish each received volume on topic "volume" (for recorders)
    motion: MotionConfig = field(default_factory=MotionConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    physio: PhysioConfig = field(default_factory=PhysioConfig)
    lsl: LslConfig = field(default_factory=LslConfig)
    blocks: BlocksConfig = field(default_factory=BlocksConfig)
    feedback: list[FeedbackConfig] = field(default_factory=list)
    latents: str = ""  # a latents directory (train.latents writes <bundle>/latents); "" none
    checkpoint: str = ""  # a directory for the state after each volume, to resume after a crash; "" none
    curve: CurveConfig = field(default_factory=CurveConfig)  # encryption and client allow-list
    max_gap_volumes: int = 10_000  # a volume further ahead of the last one is refused (a corrupt index)
    expected_volumes: int = 0  # the run's length, for the projected minutes of clean data (qa); 0 unknown
    allow_insecure_network: bool = False  # bind beyond loopback without CurveZMQ (warned at every start)


@dataclass
class ClassifierConfig:
    """A DecNef classifier trained with the decoders (see :mod:`rtdecode.models.classifier`)."""

    roi: str = ""  # "" trains none
    target: str = ""  # regular expression on events.tsv category_label marking the target class
    c: float = 0.0  # inverse L2 penalty; 0 chooses it by cross-validation


@dataclass
class LatentsConfig:
    """Diffusion-model targets trained with the decoders (see :mod:`rtdecode.models.latents`)."""

    enabled: bool = False  # needs <session>/latents.npz with one target array per block
    sources: dict = field(default_factory=lambda: {"image": "LVC", "text": "HVC"})  # target -> ROI
    alphas: list = field(default_factory=lambda: [100.0, 1000.0, 10000.0, 100000.0])


@dataclass
class TrainConfig:
    """Decoder training."""

    rois: list[str] = field(
        default_factory=lambda: ["V1", "V2", "V3", "V4", "LOC", "FFA", "PPA", "LVC", "HVC", "VC"]
    )
    composites: dict = field(
        default_factory=lambda: {
            "LVC": ["V1", "V2", "V3"],
            "HVC": ["LOC", "FFA", "PPA"],
            "VC": ["V1", "V2", "V3", "V4", "LOC", "FFA", "PPA"],
        }
    )
    n_voxels: int = 500  # voxels selected per unit, single ROIs
    n_voxels_composite: int = 1000  # voxels per unit for the composites (GOD: LVC, HVC, VC)
    alpha: float = 100.0  # ridge penalty when alphas is empty
    alphas: list = field(default_factory=lambda: [10.0, 100.0, 1000.0, 10000.0])  # chosen by CV; [] fixed
    hrf_shift_s: float = HRF_SHIFT_S
    scrub_censored: bool = True  # leave volumes flagged by motion out of the block averages
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    latents: LatentsConfig = field(default_factory=LatentsConfig)


@dataclass
class DemoConfig:
    """The demo: how fast the test session is streamed and how long to wait."""

    speed: float = 20.0
    timeout_s: float = 120.0
    reconstruct_steps: int = 100  # demo --reconstruct: feature-inversion steps per block
    reconstruct_crops: int = 60  # demo --reconstruct: training crops per photograph not shown


@dataclass
class Config:
    """A whole configuration file."""

    simulate: dict = field(default_factory=dict)  # SimParams overrides, checked by simulate
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


def is_loopback(address: str) -> bool:
    """Whether a ZeroMQ address stays on this machine (``ipc://``, ``inproc://``, ``tcp://`` to loopback)."""
    if not address.startswith("tcp://"):
        return True
    host = address[len("tcp://") :].rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def to_dict(cfg: Config) -> dict:
    """The configuration as plain data (for writing YAML)."""
    return dataclasses.asdict(cfg)
