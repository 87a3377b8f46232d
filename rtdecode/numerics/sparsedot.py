"""Sparse decoding of one volume or several at once, every unit summed in one fixed order.

A decoder whose units each read a few hundred voxels (the voxel selection of Horikawa & Kamitani
2017) costs per pass its weights and voxel indices (32 MB at GOD scale) and one product per
weight. Read one volume at a time, those bytes and the gathers of scattered voxels are the cost.
A :class:`SparseMap` therefore keeps its weights in blocks of :data:`LANES` units, laid out
(block, k, lane), and a compiled kernel decodes up to 16 volumes per pass over them: the voxels
are laid out (voxel, volume), so one weight multiplies one contiguous vector of volumes, and each
block's sums stay in registers.

Every output is ``b[u] + (((w[u,0] x[i0] + w[u,1] x[i1]) + w[u,2] x[i2]) + ...)``: each product
rounded to float32, the sum taken in index order, no fused multiply-add. That one order is what
makes a volume's features the same bits whether it was decoded alone or with others, and on the
compiled kernel or the portable one (:func:`rtdecode.numerics.kernels.sparse_blocks`).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from functools import cache, partial

import numpy as np

from rtdecode.numerics.kernels import sparse_blocks
from rtdecode.numerics.llvmjit import compile_ir, host_features

log = logging.getLogger(__name__)

LANES = 16  # units per block
COLUMNS = (1, 4, 8, 16)  # volumes per pass of a compiled kernel: the widest that a batch fills

_SIGNATURE = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 5, ctypes.c_int64, ctypes.c_int64)


def _group(lanes: int, columns: int, name: str, start: int) -> list[str]:
    # IR: lanes start..start+lanes-1 of block %blk summed over all k, then stored with their bias.
    # One <columns x float> accumulator per lane, in registers across the k loop.
    vec, wv, iv = f"<{columns} x float>", f"<{lanes} x float>", f"<{lanes} x i32>"
    g = name
    lines = [
        f"  br label %{g}",
        f"{g}:",
        f"  %{g}.k = phi i64 [0, %{g}.pre], [%{g}.k1, %{g}]",
        *[f"  %{g}.acc{n} = phi {vec} [zeroinitializer, %{g}.pre], [%{g}.s{n}, %{g}]" for n in range(lanes)],
        f"  %{g}.r = add i64 %base, %{g}.k",
        f"  %{g}.o = mul i64 %{g}.r, {LANES}",
        f"  %{g}.at = add i64 %{g}.o, {start}",
        f"  %{g}.wp = getelementptr float, ptr %w, i64 %{g}.at",
        f"  %{g}.wv = load {wv}, ptr %{g}.wp, align 4",
        f"  %{g}.ip = getelementptr i32, ptr %idx, i64 %{g}.at",
        f"  %{g}.iv = load {iv}, ptr %{g}.ip, align 4",
    ]
    for n in range(lanes):
        splat = ", ".join([f"i32 {n}"] * columns)
        lines += [
            f"  %{g}.i{n} = extractelement {iv} %{g}.iv, i32 {n}",
            f"  %{g}.j{n} = zext i32 %{g}.i{n} to i64",
            f"  %{g}.xo{n} = mul i64 %{g}.j{n}, {columns}",
            f"  %{g}.xp{n} = getelementptr float, ptr %x, i64 %{g}.xo{n}",
            f"  %{g}.x{n} = load {vec}, ptr %{g}.xp{n}, align 4",
            f"  %{g}.w{n} = shufflevector {wv} %{g}.wv, {wv} poison, <{columns} x i32> <{splat}>",
            f"  %{g}.p{n} = fmul {vec} %{g}.w{n}, %{g}.x{n}",
            f"  %{g}.s{n} = fadd {vec} %{g}.acc{n}, %{g}.p{n}",
        ]
    lines += [
        f"  %{g}.k1 = add i64 %{g}.k, 1",
        f"  %{g}.last = icmp eq i64 %{g}.k1, %k",
        f"  br i1 %{g}.last, label %{g}.end, label %{g}",
        f"{g}.end:",
    ]
    for n in range(lanes):
        lines += [
            f"  %{g}.u{n} = add i64 %unit0, {start + n}",
            f"  %{g}.bp{n} = getelementptr float, ptr %b, i64 %{g}.u{n}",
            f"  %{g}.b{n} = load float, ptr %{g}.bp{n}",
            f"  %{g}.bi{n} = insertelement {vec} poison, float %{g}.b{n}, i32 0",
            f"  %{g}.bv{n} = shufflevector {vec} %{g}.bi{n}, {vec} poison, <{columns} x i32> zeroinitializer",
            f"  %{g}.y{n} = fadd {vec} %{g}.s{n}, %{g}.bv{n}",
            f"  %{g}.oo{n} = mul i64 %{g}.u{n}, {columns}",
            f"  %{g}.op{n} = getelementptr float, ptr %out, i64 %{g}.oo{n}",
            f"  store {vec} %{g}.y{n}, ptr %{g}.op{n}, align 4",
        ]
    return lines


def decode_ir(columns: int, lanes: int) -> str:
    """LLVM IR of ``decode(w, idx, x, b, out, blocks, k)`` for ``columns`` volumes per pass.

    ``w`` float32 and ``idx`` int32 are (blocks, k, LANES); ``x`` is (n_voxels, columns),
    ``b`` (blocks * LANES,) and ``out`` (blocks * LANES, columns); blocks, k >= 1. A block's
    units are summed ``lanes`` at a time (fewer where registers are few: each lane holds one
    vector of ``columns`` sums).
    """
    body = []
    for start in range(0, LANES, lanes):
        g = f"g{start}"
        body += [f"  br label %{g}.pre", f"{g}.pre:", *_group(lanes, columns, g, start)]
    return "\n".join(
        [
            "define void @decode(ptr noalias nocapture readonly %w, ptr noalias nocapture readonly %idx,",
            "    ptr noalias nocapture readonly %x, ptr noalias nocapture readonly %b,",
            "    ptr noalias nocapture %out, i64 %blocks, i64 %k) {",
            "entry:",
            "  br label %blk",
            "blk:",
            "  %blk.i = phi i64 [0, %entry], [%blk.next, %blk.end]",
            "  %base = mul i64 %blk.i, %k",
            f"  %unit0 = mul i64 %blk.i, {LANES}",
            *body,
            "  br label %blk.end",
            "blk.end:",
            "  %blk.next = add i64 %blk.i, 1",
            "  %blk.last = icmp eq i64 %blk.next, %blocks",
            "  br i1 %blk.last, label %done, label %blk",
            "done:",
            "  ret void",
            "}",
        ]
    )


Kernel = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]


def _compiled(columns: int, lanes: int) -> Kernel:
    engine = compile_ir(decode_ir(columns, lanes))
    fn = _SIGNATURE(engine.get_function_address("decode"))

    def run(w: np.ndarray, idx: np.ndarray, x: np.ndarray, b: np.ndarray, out: np.ndarray, _e=engine) -> None:
        # _e keeps the machine code alive as long as this function.
        fn(w.ctypes.data, idx.ctypes.data, x.ctypes.data, b.ctypes.data, out.ctypes.data, *w.shape[:2])

    return run


def lanes_per_pass(columns: int, features: set[str]) -> int:
    """Units summed at once: as many vectors of ``columns`` sums as the CPU has registers for."""
    if "avx512f" in features:  # 32 vector registers
        return 16
    return 8 if columns <= 8 else 4  # 16 (AVX2) or fewer


def _agrees(kernel: Kernel, columns: int, seed: int = 0) -> bool:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((2, 5, LANES)).astype(np.float32)
    idx = rng.integers(0, 40, w.shape, dtype=np.int32)
    x = rng.standard_normal((40, columns)).astype(np.float32)
    b = rng.standard_normal(2 * LANES).astype(np.float32)
    want, got = np.empty((2 * LANES, columns), np.float32), np.empty((2 * LANES, columns), np.float32)
    sparse_blocks(w, idx, x, b, want)
    kernel(w, idx, x, b, got)
    return bool(np.array_equal(want, got))


@cache
def kernels() -> dict[int, Kernel]:
    """The kernel for each column count in :data:`COLUMNS`, chosen once per process.

    Compiled for this CPU where they give the portable kernel's bits on random data; otherwise
    (logged) the portable numba kernel, which is slower but gives the same results.
    """
    features = host_features()
    try:
        chosen = {c: _compiled(c, lanes_per_pass(c, features)) for c in COLUMNS}
    except RuntimeError as err:
        log.warning("sparse decoding kernels do not compile here (%s); using the portable one", err)
        return dict.fromkeys(COLUMNS, sparse_blocks)
    if all(_agrees(k, c) for c, k in chosen.items()):
        return chosen
    log.warning("compiled sparse decoding differs from the portable kernel; using the portable one")
    return dict.fromkeys(COLUMNS, sparse_blocks)


def _blocked(a: np.ndarray, blocks: int) -> np.ndarray:
    # (units, k) -> (blocks, k, LANES), the units past the end zero.
    padded = np.zeros((blocks * LANES, a.shape[1]), a.dtype)
    padded[: len(a)] = a
    return np.ascontiguousarray(padded.reshape(blocks, LANES, a.shape[1]).transpose(0, 2, 1))


class SparseMap:
    """``y = x @ W + b`` for a ``W`` whose columns (units) have few nonzero rows (voxels).

    Parameters
    ----------
    weights : numpy.ndarray
        float32 (n_units, k): each unit's nonzero weights, padded with zeros to one length k.
    rows : numpy.ndarray
        int (n_units, k): the input each weight multiplies, in ``0..n_inputs-1``.
    bias : numpy.ndarray
        (n_units,).
    n_inputs : int
        Length of an input vector.
    """

    def __init__(self, weights: np.ndarray, rows: np.ndarray, bias: np.ndarray, n_inputs: int) -> None:
        weights = np.asarray(weights, dtype=np.float32)
        rows = np.asarray(rows)
        if weights.ndim != 2 or rows.shape != weights.shape or np.shape(bias) != weights.shape[:1]:
            raise ValueError(
                f"weights {weights.shape}, rows {rows.shape}, bias {np.shape(bias)} do not match"
            )
        if rows.size and (rows.min() < 0 or rows.max() >= n_inputs):
            raise ValueError(f"rows must lie in 0..{n_inputs - 1}")
        self.n_units, self.n_inputs = weights.shape[0], int(n_inputs)
        k = max(weights.shape[1], 1)  # a unit with no weights is its bias alone
        blocks = max(-(-self.n_units // LANES), 1)
        self.weights = _blocked(np.pad(weights, ((0, 0), (0, k - weights.shape[1]))), blocks)
        self.rows = _blocked(np.pad(rows.astype(np.int32), ((0, 0), (0, k - rows.shape[1]))), blocks)
        self.bias = np.zeros(blocks * LANES, np.float32)
        self.bias[: self.n_units] = bias

    @property
    def nbytes(self) -> int:
        """Bytes read per pass (weights and indices)."""
        return self.weights.nbytes + self.rows.nbytes

    def apply(self, xs: np.ndarray) -> np.ndarray:
        """``xs @ W + b`` for a stack of inputs, each row the same bits as if it came alone.

        Parameters
        ----------
        xs : numpy.ndarray
            float32 (n, n_inputs).

        Returns
        -------
        numpy.ndarray
            float32 (n, n_units).
        """
        out = np.empty((len(xs), self.n_units), np.float32)
        for task in self.tasks(xs, out):
            task()
        return out

    def tasks(self, xs: np.ndarray, out: np.ndarray, pieces: int = 1) -> list[Callable[[], None]]:
        """Independent calls that together write :meth:`apply`'s answer into ``out``.

        Each takes about ``1 / pieces`` of the units, for all of ``xs``, and runs without the GIL
        on the compiled kernels: threads can share them. Every unit is summed as :meth:`apply`
        sums it, whatever the pieces, and a call run twice writes the same bits twice.

        Parameters
        ----------
        xs : numpy.ndarray
            float32 (n, n_inputs).
        out : numpy.ndarray
            float32 (n, n_units), written by the calls.
        pieces : int
            Calls per pass over the weights (at most one per block of :data:`LANES` units).

        Raises
        ------
        ValueError
            If ``xs`` or ``out`` has the wrong shape.
        """
        xs = np.asarray(xs, dtype=np.float32)
        if xs.ndim != 2 or xs.shape[1] != self.n_inputs:
            raise ValueError(f"expected (n, {self.n_inputs}) inputs, got shape {xs.shape}")
        if out.shape != (len(xs), self.n_units) or out.dtype != np.float32:
            raise ValueError(f"out must be float32 {(len(xs), self.n_units)}, got {out.dtype} {out.shape}")
        run, done, calls = kernels(), 0, []
        edges = np.linspace(0, len(self.weights), min(max(pieces, 1), len(self.weights)) + 1).astype(int)
        while done < len(xs):
            # The narrowest pass that takes what is left (at most the widest).
            columns = next(c for c in COLUMNS if c >= min(len(xs) - done, COLUMNS[-1]))
            part = xs[done : done + columns]
            x = np.zeros((self.n_inputs, columns), np.float32)
            x[:, : len(part)] = part.T
            y = np.empty((len(self.bias), columns), np.float32)
            for lo, hi in zip(edges[:-1], edges[1:]):
                calls.append(partial(self._blocks, run[columns], x, y, out[done : done + len(part)], lo, hi))
            done += len(part)
        return calls

    def _blocks(self, run: Kernel, x: np.ndarray, y: np.ndarray, out: np.ndarray, lo: int, hi: int) -> None:
        # Blocks lo..hi-1 of one pass, and their units' sums copied out; each block is summed alone.
        a, b = lo * LANES, hi * LANES
        run(self.weights[lo:hi], self.rows[lo:hi], x, self.bias[a:b], y[a:b])
        b = min(b, self.n_units)
        out[:, a:b] = y[a:b, : len(out)].T
