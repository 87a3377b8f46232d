"""Decoding a volume, or a backlog of volumes, with its work shared over threads.

A decoder's work per volume is independent tasks (one per dense ROI, pieces of each sparse ROI's
weights: :meth:`~rtdecode.models.linear.LinearBundle.predict_many`) that run without the GIL.
At GOD scale with all ten ROIs (W4) they read about 280 MB of weights per volume, which one
thread reads at its own bandwidth; two threads read it in a little over half the time.

Dense ROIs are numpy products, whose BLAS would start threads of its own: where it would
(``rtdecode run`` already sets one BLAS thread), they are held to one BLAS thread each, which also
keeps a product's bits from depending on how many BLAS threads it happened to get (a product
split over threads sums in another order).
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial

import numpy as np
from threadpoolctl import ThreadpoolController

from rtdecode.models.bundle import Decoder
from rtdecode.pipeline.helpers import HelperThreads, share


class Decoding:
    """A decoder's :meth:`~rtdecode.models.bundle.Decoder.predict_many` on ``threads`` threads.

    Parameters
    ----------
    decoder : Decoder
    threads : int
        Threads decoding, the calling thread one of them. The features are the same bits
        whatever the number.

    Notes
    -----
    The decoder's first call (kernels loaded from the disk cache, the helpers started) is made
    here, on a made-up volume, not on the first decoded one: in a live W1 run that volume's
    decode had taken 26 ms against 3 ms after it.
    """

    def __init__(self, decoder: Decoder, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        self.decoder = decoder
        self._pool = HelperThreads(threads - 1, "decode") if threads > 1 else None
        blas = ThreadpoolController().select(user_api="blas")
        # Limited around each call only where some BLAS would use more than one thread.
        self._blas = blas if any(lib["num_threads"] > 1 for lib in blas.info()) else None
        self.predict_many(np.random.default_rng(0).standard_normal((1, decoder.n_voxels)).astype(np.float32))

    def predict_many(self, xs: np.ndarray) -> np.ndarray:
        """float32 (n, n_rois, sum(n_units)) from (n, n_voxels), as the decoder's own."""
        with self._blas.limit(limits=1) if self._blas else nullcontext():
            return self.decoder.predict_many(xs, share=partial(share, self._pool))

    def close(self) -> None:
        """Stop the helper threads; safe to call twice."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
