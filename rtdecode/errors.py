"""One exception tree for rtdecode.

Every error raised on purpose derives from :class:`RtDecodeError` and also from the builtin that
matches it, so callers can catch either ``RtDecodeError`` or, say, ``ValueError``.
"""


class RtDecodeError(Exception):
    """Base class of every error rtdecode raises on purpose."""


class ConfigError(RtDecodeError, ValueError):
    """A configuration file or value breaks a rule; the message names the file and key."""


class ProtocolError(RtDecodeError, ValueError):
    """A wire message does not follow protocol v1; the message names the offending field."""


class VolumeError(RtDecodeError, ValueError):
    """A volume cannot be processed (wrong shape or dtype, non-finite values, bad index)."""


class BundleError(RtDecodeError, ValueError):
    """A decoder bundle or candidate bank is missing, corrupt or does not match the data."""


class NotFittedError(RtDecodeError, RuntimeError):
    """An estimator was used before ``fit``."""


class ReceiveTimeout(RtDecodeError, TimeoutError):
    """Nothing arrived on a socket within the allowed time."""


class SendTimeout(RtDecodeError, TimeoutError):
    """A receiver did not take a message within the allowed time (not running, or refused us)."""


class PeerDisconnected(RtDecodeError, ConnectionError):
    """A sender's connection closed: it quit, or libzmq dropped it for a message over the size limit."""


class RecordingError(RtDecodeError, OSError):
    """A recording could not be written (disk full, file size limit, I/O error)."""
