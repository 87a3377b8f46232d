"""One exception tree for rtdecode, in which the class says whose fault an error is.

::

    RtDecodeError
    ├── ConfigError          the configuration (a file, a key, a command-line value)
    ├── DataError            data given to rtdecode
    │   ├── ProtocolError    a message from a sender breaks protocol v1
    │   ├── VolumeError      a volume cannot be processed
    │   └── EventsError      an events table (events.tsv) is malformed
    ├── FileError            files on disk
    │   ├── ModelFileError   a decoder bundle, candidate bank, latent map or classifier
    │   ├── CheckpointError  a checkpoint
    │   └── RecordingError   a recording (unwritable, or not one)
    ├── EndpointError        a network endpoint
    │   ├── BindError        an address cannot be bound (in use, not ours)
    │   ├── ReceiveTimeout   nothing arrived in time
    │   ├── SendTimeout      nobody took a message in time
    │   └── PeerDisconnected a sender's connection closed
    └── NotFittedError       an estimator used before ``fit`` (a programming error)

Each class also derives from the builtin that matches it, so callers can catch either
``RtDecodeError`` or, say, ``ValueError``/``OSError``/``TimeoutError``. Errors raised while
handling another are raised ``from`` it, so the cause stays in the traceback.
"""

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
]


class RtDecodeError(Exception):
    """Base class of every error rtdecode raises on purpose."""


class ConfigError(RtDecodeError, ValueError):
    """A configuration file or value breaks a rule; the message names the file and key."""


class DataError(RtDecodeError, ValueError):
    """Data given to rtdecode (a message, a volume, a table) cannot be used."""


class ProtocolError(DataError):
    """A wire message does not follow protocol v1; the message names the offending field.

    ``context`` holds the ``session``, ``series`` and ``seq`` of the message when they could be
    read, so that a refusal can say which volume it concerns.
    """

    def __init__(self, *args: object, context: dict | None = None) -> None:
        super().__init__(*args)
        self.context = dict(context or {})


class VolumeError(DataError):
    """A volume cannot be processed (wrong shape or dtype, non-finite values, bad index)."""


class EventsError(DataError):
    """An events table is malformed or does not fit the candidates."""


class FileError(RtDecodeError, OSError):
    """A file on disk is missing, unreadable, of another kind, or cannot be written."""


class ModelFileError(FileError, ValueError):
    """A decoder bundle, candidate bank, latent map or classifier is missing, corrupt or does not fit."""


class CheckpointError(FileError):
    """A checkpoint cannot be read or does not fit the pipeline."""


class RecordingError(FileError):
    """A recording could not be written (disk full, file size limit) or is not a recording."""


class EndpointError(RtDecodeError, ConnectionError):
    """A network endpoint failed."""


class BindError(EndpointError):
    """An address cannot be bound: in use, malformed, or not an interface of this machine."""


class ReceiveTimeout(EndpointError, TimeoutError):
    """Nothing arrived on a socket within the allowed time."""


class SendTimeout(EndpointError, TimeoutError):
    """A receiver did not take a message within the allowed time (not running, or refused us)."""


class PeerDisconnected(EndpointError):
    """A sender's connection closed: it quit, or libzmq dropped it for a message over the size limit."""


class NotFittedError(RtDecodeError, RuntimeError):
    """An estimator was used before ``fit``."""
