"""rtdecode: real-time decoding of seen and imagined content from fMRI.

The package is layered; a module's folder says what it may import (``docs/architecture.md``).
The exception tree (:mod:`rtdecode.errors`) is exported here, so a client can write
``except rtdecode.RtDecodeError``.
"""

from importlib.metadata import PackageNotFoundError, version

from rtdecode import errors
from rtdecode.errors import *  # noqa: F403  (the exception tree is part of the package's interface)

try:
    __version__ = version("rtdecode")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [*errors.__all__, "__version__"]
