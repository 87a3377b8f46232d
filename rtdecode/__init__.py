"""rtdecode: real-time decoding of seen and imagined content from fMRI.

The package is layered; a module's folder says what it may import (``docs/architecture.md``).
The exception tree is exported here, so a client can ``except rtdecode.RtDecodeError``.
"""

from importlib.metadata import PackageNotFoundError, version

from rtdecode.errors import (
    BindError,
    CheckpointError,
    ConfigError,
    DataError,
    EndpointError,
    EventsError,
    FileError,
    ModelFileError,
    NotFittedError,
    PeerDisconnected,
    ProtocolError,
    ReceiveTimeout,
    RecordingError,
    RtDecodeError,
    SendTimeout,
    VolumeError,
)

try:
    __version__ = version("rtdecode")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "BindError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EndpointError",
    "EventsError",
    "FileError",
    "ModelFileError",
    "NotFittedError",
    "PeerDisconnected",
    "ProtocolError",
    "ReceiveTimeout",
    "RecordingError",
    "RtDecodeError",
    "SendTimeout",
    "VolumeError",
    "__version__",
]
