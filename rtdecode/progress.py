"""Progress bars for long work (training, simulation, replay, offline runs), all alike.

Shown on a terminal and left out when stderr is a pipe or a file (logs stay clean);
``RTDECODE_PROGRESS=1`` forces them on and ``0`` off.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress(iterable: Iterable | None = None, desc: str = "", **kwargs: Any) -> tqdm:
    """A :class:`tqdm.tqdm` bar over ``iterable`` (or updated by hand) on stderr.

    Parameters
    ----------
    iterable : iterable, optional
    desc : str
        What is being done, shown before the bar.
    **kwargs
        Passed to :class:`tqdm.tqdm` (``total``, ``unit``, ...).
    """
    forced = os.environ.get("RTDECODE_PROGRESS", "")
    disable = {"1": False, "0": True}.get(forced)  # None: tqdm shows it only on a terminal
    return tqdm(iterable, desc=desc, disable=disable, dynamic_ncols=True, **kwargs)
