"""Exact int8 dot products on the CPU's own integer dot-product instructions.

Ranking multiplies a bank of int8 codes with a few int8 queries. A loop in numba gets sign
extension and ``vpmaddwd`` (16 products per instruction) at best; the instructions made for this
do 32 (AVX2 ``vpmaddubsw``) or 64 (AVX-512 VNNI ``vpdpbusd``) and keep up with memory. The kernels
are written in LLVM IR (:mod:`rtdecode.numerics.int8_ir`) and compiled at start-up for the host
CPU (:mod:`rtdecode.numerics.llvmjit`):

- ``avx512vnni``: ``vpdpbusd`` on 512 bits. It multiplies unsigned by signed bytes, so the bank
  byte is made unsigned (``c + 128``, one ``xor``) and ``128 * sum(q)`` is subtracted at the end;
- ``avxvnni``: the same on 256 bits (VEX-encoded VNNI of CPUs without AVX-512);
- ``avx2``: ``vpmaddubsw`` then ``vpmaddwd``. The query's sign moves onto the bank byte
  (``vpsignb``) so the unsigned operand is ``|q|``; with both sides in -127..127 the pairs
  ``vpmaddubsw`` adds in int16 stay below 2 * 127 * 127 < 2**15 and never saturate;
- ``portable``: :func:`rtdecode.numerics.kernels.int8_scores`, the numba loop.

All four compute the same exact integer sums, and each is a C function of one signature
(:data:`SIGNATURE`), so compiled code calls whichever was chosen without the GIL (:func:`products`,
which :func:`rtdecode.numerics.topk.rank_layers` calls). The best one the CPU has is chosen at start-up, and
only after it has matched the portable kernel on random data (:func:`selected`).
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass, field
from functools import cache

import numba
import numpy as np

from rtdecode.numerics.int8_ir import ISAS, MAX_WIDTH, ROW_ALIGN, kernel_ir
from rtdecode.numerics.kernels import int8_scores as portable_scores
from rtdecode.numerics.llvmjit import compile_ir, host_features, optimised, target_machine

log = logging.getLogger(__name__)

# scores(codes, query, absquery, bias, out, n, r, width): every kernel, the portable one too.
SIGNATURE = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
    ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
)  # fmt: skip


@numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)
def _query_operands(query: np.ndarray, biased: bool) -> tuple[np.ndarray, np.ndarray]:
    # What a kernel reads besides the codes: |query| (AVX2; -127..127, no overflow) and the bias
    # it subtracts from each sum, 128 * sum(q) for the VNNI kernels (vpdpbusd takes one unsigned
    # side, so each bank byte is read as c + 128), 0 for the others.
    r, width = query.shape
    absq = np.empty((r, width), np.int8)
    bias = np.zeros(r, np.int32)
    for q in range(r):
        total = 0
        for j in range(width):
            absq[q, j] = abs(query[q, j])
            total += query[q, j]
        if biased:
            bias[q] = 128 * total
    return absq, bias


@numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)
def products(function: object, biased: bool, codes: np.ndarray, query: np.ndarray, out: np.ndarray) -> None:
    """``out = query @ codes.T`` by one kernel's C function, callable from compiled code.

    Parameters
    ----------
    function : ctypes function
        A kernel's :attr:`Int8Kernel.function`.
    biased : bool
        Its :attr:`Int8Kernel.biased`.
    codes, query, out : numpy.ndarray
        As :meth:`Int8Kernel.__call__` takes them, unchecked.
    """
    (n, width), r = codes.shape, query.shape[0]
    if n and r:
        absq, bias = _query_operands(query, biased)
        function(codes.ctypes, query.ctypes, absq.ctypes, bias.ctypes, out.ctypes, n, r, width)


def assembly(isa: str, cpu: str) -> str:
    """The machine code of one kernel compiled for a named CPU (``llc -mcpu``), as text.

    Lets a machine without the instructions check what a machine with them would run.
    """
    machine = target_machine(cpu)
    return machine.emit_assembly(optimised(kernel_ir(isa), machine))


@dataclass(frozen=True)
class Int8Kernel:
    """One kernel: ``kernel(codes, query, out)`` fills ``out = query @ codes.T`` exactly.

    Parameters
    ----------
    isa : str
        ``"avx512vnni"``, ``"avxvnni"``, ``"avx2"`` or ``"portable"``.
    function : ctypes function
        The kernel, a C function of :data:`SIGNATURE`.
    code : object
        What holds ``function``'s machine code, kept alive as long as the kernel.
    """

    isa: str
    function: ctypes._CFuncPtr
    code: object = field(default=None, repr=False, compare=False)

    @property
    def biased(self) -> bool:
        """Whether the kernel subtracts ``128 * sum(q)`` from each sum (the VNNI kernels)."""
        return "vnni" in self.isa

    def __call__(self, codes: np.ndarray, query: np.ndarray, out: np.ndarray) -> None:
        """Exact ``out[q, i] = sum_j codes[i, j] * query[q, j]``.

        Parameters
        ----------
        codes : numpy.ndarray
            int8 (n, width), C-contiguous, values in -127..127, width a multiple of 64 (rows
            padded with zeros: see :func:`padded_width`) and at most :data:`MAX_WIDTH`.
        query : numpy.ndarray
            int8 (r, width), the same.
        out : numpy.ndarray
            int32 (r, n), C-contiguous.

        Raises
        ------
        TypeError, ValueError
            On other dtypes, shapes or layouts.
        """
        if codes.dtype != np.int8 or query.dtype != np.int8 or out.dtype != np.int32:
            raise TypeError(
                f"need int8 codes and query, int32 out; got {codes.dtype}, {query.dtype}, {out.dtype}"
            )
        if codes.ndim != 2 or query.ndim != 2 or codes.shape[1] != query.shape[1]:
            raise ValueError(f"codes {codes.shape} and query {query.shape} must be 2-D of one width")
        if codes.shape[1] % ROW_ALIGN:
            raise ValueError(f"row width {codes.shape[1]} is not a multiple of {ROW_ALIGN}: pad with zeros")
        if codes.shape[1] > MAX_WIDTH:
            raise ValueError(f"row width {codes.shape[1]} overflows int32 sums (at most {MAX_WIDTH})")
        if out.shape != (query.shape[0], codes.shape[0]):
            raise ValueError(f"out {out.shape} must be {(query.shape[0], codes.shape[0])}")
        if not (codes.flags.c_contiguous and query.flags.c_contiguous and out.flags.c_contiguous):
            raise ValueError("codes, query and out must be C-contiguous")
        products(self.function, self.biased, codes, query, out)


def padded_width(m: int) -> int:
    """The row width, in bytes, that holds ``m`` codes for every kernel: ``m`` rounded up to 64."""
    return -(-m // ROW_ALIGN) * ROW_ALIGN


def compile_kernel(isa: str) -> Int8Kernel:
    """Compile one kernel for this CPU (which must have the instructions to run it).

    Raises
    ------
    RuntimeError
        If LLVM cannot compile it here.
    """
    if isa == "portable":
        return Int8Kernel(isa, _portable())
    if isa not in available():  # LLVM would abort the process, not raise
        raise RuntimeError(f"this CPU lacks {ISAS[isa].needs}")
    engine = compile_ir(kernel_ir(isa))
    return Int8Kernel(isa, SIGNATURE(engine.get_function_address("scores")), engine)


@cache
def _portable() -> ctypes._CFuncPtr:
    # The numba loop behind the kernels' C signature, compiled (or loaded from the disk cache)
    # only when asked for.
    @numba.cfunc(numba.types.void(*[numba.types.voidptr] * 5, *[numba.types.int64] * 3), cache=True)
    def scores(codes, query, absquery, bias, out, n, r, width):  # noqa: D103
        portable_scores(
            numba.carray(codes, (n, width), np.int8),
            numba.carray(query, (r, width), np.int8),
            numba.carray(out, (r, n), np.int32),
        )

    return scores.ctypes


def available() -> list[str]:
    """The kernels this CPU can run, fastest first (``portable`` always)."""
    have = host_features()
    return [isa for isa, spec in ISAS.items() if have.issuperset(spec.needs)] + ["portable"]


def agrees_with_portable(kernel: Int8Kernel, seed: int = 0) -> bool:
    """Whether ``kernel`` gives the portable kernel's sums on random codes at the extremes too."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(-127, 128, (67, 3 * ROW_ALIGN), dtype=np.int8)
    codes[0], codes[1] = 127, -127  # the largest sums, both signs
    query = rng.integers(-127, 128, (5, 3 * ROW_ALIGN), dtype=np.int8)
    query[0], query[1] = 127, -127
    want, got = np.empty((5, 67), np.int32), np.empty((5, 67), np.int32)
    portable_scores(codes, query, want)
    kernel(codes, query, got)
    return bool(np.array_equal(want, got))


@cache
def selected() -> Int8Kernel:
    """The fastest kernel this CPU runs correctly, chosen once per process.

    ``RTDECODE_INT8_KERNEL`` names one instead (to compare them); a kernel that fails to compile
    or to match the portable one is logged and passed over.
    """
    forced = os.environ.get("RTDECODE_INT8_KERNEL", "")
    if forced and forced not in (*ISAS, "portable"):
        raise ValueError(f"RTDECODE_INT8_KERNEL must be one of {[*ISAS, 'portable']}, got {forced!r}")
    for isa in [forced] if forced else available():
        try:
            kernel = compile_kernel(isa)
        except RuntimeError as e:
            log.warning("int8 kernel %s does not compile here (%s); trying the next", isa, e)
            continue
        if agrees_with_portable(kernel):
            log.info("int8 scoring kernel: %s", isa)
            return kernel
        log.warning("int8 kernel %s differs from the portable kernel; not used", isa)
    return compile_kernel("portable")
