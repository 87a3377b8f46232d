"""Exact int8 dot products on the CPU's own integer dot-product instructions.

Ranking multiplies a bank of int8 codes with a few int8 queries. A loop in numba gets sign
extension and ``vpmaddwd`` (16 products per instruction) at best; the instructions made for this
do 32 (AVX2 ``vpmaddubsw``) or 64 (AVX-512 VNNI ``vpdpbusd``) and keep up with memory. The kernels
are written in LLVM IR and compiled at start-up by llvmlite (which numba brings) for the host CPU:

- ``avx512vnni``: ``vpdpbusd`` on 512 bits. It multiplies unsigned by signed bytes, so the bank
  byte is made unsigned (``c + 128``, one ``xor``) and ``128 * sum(q)`` is subtracted at the end;
- ``avxvnni``: the same on 256 bits (VEX-encoded VNNI of CPUs without AVX-512);
- ``avx2``: ``vpmaddubsw`` then ``vpmaddwd``. The query's sign moves onto the bank byte
  (``vpsignb``) so the unsigned operand is ``|q|``; with both sides in -127..127 the pairs
  ``vpmaddubsw`` adds in int16 stay below 2 * 127 * 127 < 2**15 and never saturate;
- ``portable``: :func:`rtdecode.numerics.kernels.int8_scores`, the numba loop.

All four compute the same exact integer sums. The best one the CPU has is chosen at start-up, and
only after it has matched the portable kernel on random data (:func:`selected`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import llvmlite.binding as llvm
import numpy as np

from rtdecode.numerics.kernels import int8_scores as portable_scores

log = logging.getLogger(__name__)

ROW_ALIGN = 64  # bytes: the widest kernel's chunk; rows of codes and queries are padded to it
# The widest row whose sums of 127 * 127 products stay exact in int32.
MAX_WIDTH = (2**31 - 1) // (127 * 127) // ROW_ALIGN * ROW_ALIGN
# The bank is read ahead by this much: measured ~15 % faster than the hardware prefetcher alone
# on one thread (AMD EPYC Zen 3, 1,000-byte rows).
PREFETCH_BYTES = 2048


def _splat(element: str, lanes: int) -> str:
    return "<" + ", ".join([element] * lanes) + ">"


# ISA -> (CPU features it needs, bytes per chunk, chunk body). A body gets the bank chunk %c, the
# query chunk %q and its absolute values %u (<B x i8>) and the accumulator %acc (<B/4 x i32>),
# and defines %a2.
_VNNI_BODY = """
  %cu = xor <{b} x i8> %c, {flip}
  %cw = bitcast <{b} x i8> %cu to <{l} x i32>
  %qw = bitcast <{b} x i8> %q to <{l} x i32>
  %a2 = call <{l} x i32> @llvm.x86.avx512.vpdpbusd.{bits}(
            <{l} x i32> %acc, <{l} x i32> %cw, <{l} x i32> %qw)"""
_ISAS = {
    "avx512vnni": (
        ("avx512f", "avx512bw", "avx512vnni"),
        64,
        _VNNI_BODY.format(b=64, l=16, bits=512, flip=_splat("i8 -128", 64)),
    ),
    "avxvnni": (("avx2", "avxvnni"), 32, _VNNI_BODY.format(b=32, l=8, bits=256, flip=_splat("i8 -128", 32))),
    "avx2": (
        ("avx2",),
        32,
        """
  %cs = call <32 x i8> @llvm.x86.avx2.psign.b(<32 x i8> %c, <32 x i8> %q)
  %p16 = call <16 x i16> @llvm.x86.avx2.pmadd.ub.sw(<32 x i8> %u, <32 x i8> %cs)
  %p32 = call <8 x i32> @llvm.x86.avx2.pmadd.wd(<16 x i16> %p16, <16 x i16> ONES)
  %a2 = add <8 x i32> %acc, %p32""".replace("ONES", _splat("i16 1", 16)),
    ),
}
_DECLARE = """
declare <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32>, <16 x i32>, <16 x i32>)
declare <8 x i32> @llvm.x86.avx512.vpdpbusd.256(<8 x i32>, <8 x i32>, <8 x i32>)
declare <32 x i8> @llvm.x86.avx2.psign.b(<32 x i8>, <32 x i8>)
declare <16 x i16> @llvm.x86.avx2.pmadd.ub.sw(<32 x i8>, <32 x i8>)
declare <8 x i32> @llvm.x86.avx2.pmadd.wd(<16 x i16>, <16 x i16>)
declare void @llvm.prefetch.p0(ptr, i32, i32, i32)
declare i32 @llvm.vector.reduce.add.v16i32(<16 x i32>)
declare i32 @llvm.vector.reduce.add.v8i32(<8 x i32>)
"""


# Queries scored per pass over a row, widest first and ending with one (so every query is scored):
# the row's chunks are loaded once per pass.
QUERY_BLOCKS = (4, 2, 1)


def _query_pass(chunk: int, body: str, size: int, pred: str, first: str) -> str:
    # IR of the loop that scores the row %crow against ``size`` queries at a time while that many
    # are left: block q{size}, entered from block ``pred`` with the next query's index ``first``,
    # leaves to block q{size}.next.
    lanes, vec, acc, t = chunk // 4, f"<{chunk} x i8>", f"<{chunk // 4} x i32>", f"q{size}"
    queries = [f"{t}.{n}" for n in range(size)]

    def own(text: str, s: str) -> str:  # the chunk body with query s's own names, %c shared
        return re.sub(r"%(\w+)", lambda m: f"%c.{t}" if m.group(1) == "c" else f"%{m.group(1)}.{s}", text)

    lines = [
        f"{t}:",
        f"  %j.{t} = phi i64 [{first}, %{pred}], [%jn.{t}, %{t}.end]",
        f"  %left.{t} = sub i64 %r, %j.{t}",
        f"  %go.{t} = icmp uge i64 %left.{t}, {size}",
        f"  br i1 %go.{t}, label %{t}.start, label %{t}.next",
        f"{t}.start:",
    ]
    for n, s in enumerate(queries):
        lines += [
            f"  %jq.{s} = add i64 %j.{t}, {n}",
            f"  %qoff.{s} = mul i64 %jq.{s}, %width",
            f"  %qrow.{s} = getelementptr i8, ptr %query, i64 %qoff.{s}",
            f"  %urow.{s} = getelementptr i8, ptr %absquery, i64 %qoff.{s}",
        ]
    lines += [
        f"  br label %{t}.chunk",
        f"{t}.chunk:",
        f"  %k.{t} = phi i64 [0, %{t}.start], [%k1.{t}, %{t}.chunk]",
        *[f"  %acc.{s} = phi {acc} [zeroinitializer, %{t}.start], [%a2.{s}, %{t}.chunk]" for s in queries],
        f"  %off.{t} = mul i64 %k.{t}, {chunk}",
        f"  %cp.{t} = getelementptr i8, ptr %crow, i64 %off.{t}",
        f"  %ahead.{t} = getelementptr i8, ptr %cp.{t}, i64 {PREFETCH_BYTES}",
        f"  call void @llvm.prefetch.p0(ptr %ahead.{t}, i32 0, i32 0, i32 1)",
        f"  %c.{t} = load {vec}, ptr %cp.{t}, align 1",
    ]
    for s in queries:
        lines += [
            f"  %qp.{s} = getelementptr i8, ptr %qrow.{s}, i64 %off.{t}",
            f"  %up.{s} = getelementptr i8, ptr %urow.{s}, i64 %off.{t}",
            f"  %q.{s} = load {vec}, ptr %qp.{s}, align 1",
            f"  %u.{s} = load {vec}, ptr %up.{s}, align 1",
            own(body, s).strip("\n"),
        ]
    lines += [
        f"  %k1.{t} = add i64 %k.{t}, 1",
        f"  %kdone.{t} = icmp eq i64 %k1.{t}, %chunks",
        f"  br i1 %kdone.{t}, label %{t}.end, label %{t}.chunk",
        f"{t}.end:",
    ]
    for s in queries:
        lines += [
            f"  %sum.{s} = call i32 @llvm.vector.reduce.add.v{lanes}i32({acc} %a2.{s})",
            f"  %bp.{s} = getelementptr i32, ptr %bias, i64 %jq.{s}",
            f"  %b.{s} = load i32, ptr %bp.{s}",
            f"  %s.{s} = sub i32 %sum.{s}, %b.{s}",
            f"  %oi0.{s} = mul i64 %jq.{s}, %n",
            f"  %oi.{s} = add i64 %oi0.{s}, %i",
            f"  %op.{s} = getelementptr i32, ptr %out, i64 %oi.{s}",
            f"  store i32 %s.{s}, ptr %op.{s}",
        ]
    lines += [f"  %jn.{t} = add i64 %j.{t}, {size}", f"  br label %{t}", f"{t}.next:"]
    return "\n".join(lines)


def kernel_ir(isa: str) -> str:
    """LLVM IR of ``scores(codes, query, absquery, bias, out, n, r, width)`` for one instruction set.

    ``out[q * n + i] = sum_j codes[i * width + j] * query[q * width + j] - bias[q]``, where the VNNI
    kernels see each bank byte as ``c + 128`` and need ``bias = 128 * sum(q)`` (0 otherwise);
    ``absquery`` is ``|query|``; ``width`` is a multiple of the chunk and n, r >= 1. A row is
    scored against four queries per pass while four are left, then two, then one: its chunks are
    loaded once per pass (with one query per pass, ten queries cost twice as much on AVX2).
    """
    _, chunk, body = _ISAS[isa]
    passes, came_from, first = [], "row", "0"
    for size in QUERY_BLOCKS:  # each pass starts at the query the one before stopped at
        if passes:
            passes.append(f"  br label %q{size}")
        passes.append(_query_pass(chunk, body, size, came_from, first))
        came_from, first = f"q{size}.next", f"%j.q{size}"
    body_ir = "\n".join(passes)
    return f"""{_DECLARE}
define void @scores(ptr noalias nocapture readonly %codes, ptr noalias nocapture readonly %query,
                    ptr noalias nocapture readonly %absquery, ptr noalias nocapture readonly %bias,
                    ptr noalias nocapture %out,
                    i64 %n, i64 %r, i64 %width) {{
entry:
  %chunks = udiv i64 %width, {chunk}
  br label %row
row:
  %i = phi i64 [0, %entry], [%i1, %{came_from}]
  %rowoff = mul i64 %i, %width
  %crow = getelementptr i8, ptr %codes, i64 %rowoff
  br label %q{QUERY_BLOCKS[0]}
{body_ir}
  %i1 = add i64 %i, 1
  %idone = icmp eq i64 %i1, %n
  br i1 %idone, label %exit, label %row
exit:
  ret void
}}
"""


_SIGNATURE = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
    ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
)  # fmt: skip


def _target_machine(cpu: str | None = None) -> llvm.TargetMachine:
    # The host, with the features it reports (a VM may hide some its CPU model has), or a named CPU.
    features = llvm.get_host_cpu_features().flatten() if cpu is None else ""
    return llvm.Target.from_triple(llvm.get_process_triple()).create_target_machine(
        cpu=cpu or llvm.get_host_cpu_name(), features=features, opt=3
    )


def assembly(isa: str, cpu: str) -> str:
    """The machine code of one kernel compiled for a named CPU (``llc -mcpu``), as text.

    Lets a machine without the instructions check what a machine with them would run.
    """
    machine = _target_machine(cpu)
    return machine.emit_assembly(_optimised_module(isa, machine))


def _optimised_module(isa: str, machine: llvm.TargetMachine) -> llvm.ModuleRef:
    # LLVM's -O3 pipeline for the machine: the chunk loop unrolled and interleaved.
    _init_llvm()
    module = llvm.parse_assembly(kernel_ir(isa))
    module.verify()
    builder = llvm.create_pass_builder(machine, llvm.PipelineTuningOptions(speed_level=3))
    builder.getModulePassManager().run(module, builder)
    return module


@cache
def _init_llvm() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


@dataclass(frozen=True)
class Int8Kernel:
    """One kernel: ``kernel(codes, query, out)`` fills ``out = query @ codes.T`` exactly.

    Parameters
    ----------
    isa : str
        ``"avx512vnni"``, ``"avxvnni"``, ``"avx2"`` or ``"portable"``.
    run : callable
        ``run(codes, query, out)`` on checked arrays.
    """

    isa: str
    run: Callable[[np.ndarray, np.ndarray, np.ndarray], None]

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
        if codes.shape[0] and query.shape[0]:
            self.run(codes, query, out)


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
        return Int8Kernel(isa, portable_scores)
    if isa not in available():  # LLVM would abort the process, not raise
        raise RuntimeError(f"this CPU lacks {_ISAS[isa][0]}")
    machine = _target_machine()
    engine = llvm.create_mcjit_compiler(_optimised_module(isa, machine), machine)
    engine.finalize_object()
    fn = _SIGNATURE(engine.get_function_address("scores"))
    vnni = "vnni" in isa

    def run(codes: np.ndarray, query: np.ndarray, out: np.ndarray, _engine: object = engine) -> None:
        # _engine keeps the machine code alive as long as this function. vpdpbusd read each bank
        # byte as c + 128: the bias takes the 128 * sum(q) that adds back off.
        r, (n, width) = query.shape[0], codes.shape
        # Each kernel reads only one of these: the bias (VNNI) or |q| (AVX2, -127..127: no overflow).
        bias = 128 * query.sum(1, dtype=np.int32) if vnni else np.zeros(r, np.int32)
        absq = query if vnni else np.abs(query)
        fn(
            codes.ctypes.data,
            query.ctypes.data,
            absq.ctypes.data,
            bias.ctypes.data,
            out.ctypes.data,
            n,
            r,
            width,
        )

    return Int8Kernel(isa, run)


def available() -> list[str]:
    """The kernels this CPU can run, fastest first (``portable`` always)."""
    have = {k for k, v in llvm.get_host_cpu_features().items() if v}
    return [isa for isa, (needs, *_) in _ISAS.items() if have.issuperset(needs)] + ["portable"]


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
    if forced and forced not in (*_ISAS, "portable"):
        raise ValueError(f"RTDECODE_INT8_KERNEL must be one of {[*_ISAS, 'portable']}, got {forced!r}")
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
