"""Numerical kernels and statistics shared by pipeline, models and offline code; imports nothing of theirs."""

import os
import tempfile
from pathlib import Path

# numba caches compiled kernels beside the source; an installed, read-only package needs another
# place. Set here, before any kernel module imports numba.
if not os.access(Path(__file__).parent, os.W_OK) and "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / f"rtdecode-numba-{os.getuid()}")
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")  # no OpenMP spin-waiting on 2 cores
