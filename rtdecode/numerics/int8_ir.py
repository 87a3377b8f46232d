"""LLVM IR of the int8 dot-product kernels (:mod:`rtdecode.numerics.intdot` compiles and runs them).

One function, ``scores``, per instruction set: the bank is read in blocks of rows, each block
scored against a few queries per pass, every product summed exactly in int32 lanes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROW_ALIGN = 64  # bytes: the widest kernel's chunk; rows of codes and queries are padded to it
# The widest row whose sums of 127 * 127 products stay exact in int32.
MAX_WIDTH = (2**31 - 1) // (127 * 127) // ROW_ALIGN * ROW_ALIGN
# Queries scored per pass over a block of rows, widest first and ending with one (so every query
# is scored): each chunk of the block's rows is loaded once per pass.
QUERY_BLOCKS = (4, 2, 1)


def _splat(element: str, lanes: int) -> str:
    return "<" + ", ".join([element] * lanes) + ">"


@dataclass(frozen=True)
class Isa:
    """How one instruction set's kernel is built.

    ``needs``: the CPU features it runs on; ``chunk``: bytes per step; ``body``: IR of one step
    (below); ``rows``: bank rows scored per pass, widest first and ending with one; ``prefetch``:
    bytes read ahead in software (0: the hardware prefetcher alone).
    """

    needs: tuple[str, ...]
    chunk: int
    body: str
    rows: tuple[int, ...]
    prefetch: int


# A body gets the bank chunk %c, the query chunk %q and its absolute values %u (<B x i8>) and the
# accumulator %acc (<B/4 x i32>), and defines %a2.
_VNNI_BODY = """
  %cu = xor <{b} x i8> %c, {flip}
  %cw = bitcast <{b} x i8> %cu to <{l} x i32>
  %qw = bitcast <{b} x i8> %q to <{l} x i32>
  %a2 = call <{l} x i32> @llvm.x86.avx512.vpdpbusd.{bits}(
            <{l} x i32> %acc, <{l} x i32> %cw, <{l} x i32> %qw)"""
_AVX2_BODY = """
  %cs = call <32 x i8> @llvm.x86.avx2.psign.b(<32 x i8> %c, <32 x i8> %q)
  %p16 = call <16 x i16> @llvm.x86.avx2.pmadd.ub.sw(<32 x i8> %u, <32 x i8> %cs)
  %p32 = call <8 x i32> @llvm.x86.avx2.pmadd.wd(<16 x i16> %p16, <16 x i16> ONES)
  %a2 = add <8 x i32> %acc, %p32""".replace("ONES", _splat("i16 1", 16))
# Measured on AMD EPYC, one layer of 15,372 x 1,024 codes: with AVX-512 (Zen 4), software
# prefetch made one query 40-65 % slower and the hardware prefetcher alone reached numpy's read
# bandwidth; with AVX2 it was ~15 % faster on Zen 3 and neutral on Zen 4. Two rows per pass keep
# eight independent vpdpbusd chains with four queries (one row: four, each a serial chain) and load
# six vectors per eight products instead of five per four; the 256-bit kernels have 16 vector
# registers, too few for more than one row.
ISAS = {
    "avx512vnni": Isa(
        ("avx512f", "avx512bw", "avx512vnni"),
        64,
        _VNNI_BODY.format(b=64, l=16, bits=512, flip=_splat("i8 -128", 64)),
        rows=(2, 1),
        prefetch=0,
    ),
    "avxvnni": Isa(
        ("avx2", "avxvnni"),
        32,
        _VNNI_BODY.format(b=32, l=8, bits=256, flip=_splat("i8 -128", 32)),
        rows=(1,),
        prefetch=2048,
    ),
    "avx2": Isa(("avx2",), 32, _AVX2_BODY, rows=(1,), prefetch=2048),
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


def _row(ptr: str, index: str, base: str) -> list[str]:
    # IR: %ptr, the start of row ``index`` of the array %base (rows of %width bytes).
    return [
        f"  %{ptr}.o = mul i64 {index}, %width",
        f"  %{ptr} = getelementptr i8, ptr %{base}, i64 %{ptr}.o",
    ]


def _load(value: str, row: str, vec: str) -> list[str]:
    # IR: %value, the chunk at byte %off of the row %row (its address is %value.p).
    return [
        f"  %{value}.p = getelementptr i8, ptr %{row}, i64 %off",
        f"  %{value} = load {vec}, ptr %{value}.p, align 1",
    ]


def _tile(isa: Isa, rows: int, queries: int) -> str:
    # IR of @tile.R.Q: rows i, i + h, ..., i + (R-1) h of the bank against queries j..j+Q-1, all
    # R * Q sums accumulated in one pass over the chunks (each row chunk and query chunk loaded
    # once). Rows h apart, not adjacent: each is then part of one long sequential stream, which
    # the hardware prefetcher follows (adjacent rows read in step ran 2-3x slower from memory).
    b, lanes = isa.chunk, isa.chunk // 4
    vec, acc = f"<{b} x i8>", f"<{lanes} x i32>"
    pairs = [(a, s) for a in range(rows) for s in range(queries)]

    def own(a: int, s: int) -> str:  # the body with the names of row a and query s
        names = {"c": f"c{a}", "q": f"q{s}", "u": f"u{s}"}
        return re.sub(r"%(\w+)", lambda m: "%" + names.get(m.group(1), f"{m.group(1)}.{a}.{s}"), isa.body)

    lines = [
        f"define internal void @tile.{rows}.{queries}(ptr %codes, ptr %query, ptr %absquery, ptr %bias,",
        "    ptr %out, i64 %n, i64 %width, i64 %i, i64 %h, i64 %j) alwaysinline {",
        "entry:",
        f"  %chunks = udiv i64 %width, {b}",
    ]
    for a in range(rows):
        lines += [
            f"  %ah{a} = mul i64 %h, {a}",
            f"  %ia{a} = add i64 %i, %ah{a}",
            *_row(f"crow{a}", f"%ia{a}", "codes"),
        ]
    for s in range(queries):
        lines += [f"  %jq{s} = add i64 %j, {s}", *_row(f"qrow{s}", f"%jq{s}", "query")]
        lines += _row(f"urow{s}", f"%jq{s}", "absquery")
    lines += [
        "  br label %chunk",
        "chunk:",
        "  %k = phi i64 [0, %entry], [%k1, %chunk]",
        *[f"  %acc.{a}.{s} = phi {acc} [zeroinitializer, %entry], [%a2.{a}.{s}, %chunk]" for a, s in pairs],
        f"  %off = mul i64 %k, {b}",
    ]
    for a in range(rows):
        lines += _load(f"c{a}", f"crow{a}", vec)
        if isa.prefetch:
            lines += [
                f"  %ahead{a} = getelementptr i8, ptr %c{a}.p, i64 {isa.prefetch}",
                f"  call void @llvm.prefetch.p0(ptr %ahead{a}, i32 0, i32 0, i32 1)",
            ]
    for s in range(queries):
        lines += _load(f"q{s}", f"qrow{s}", vec) + _load(f"u{s}", f"urow{s}", vec)
    lines += [own(a, s).strip("\n") for a, s in pairs]
    lines += [
        "  %k1 = add i64 %k, 1",
        "  %kdone = icmp eq i64 %k1, %chunks",
        "  br i1 %kdone, label %end, label %chunk",
        "end:",
    ]
    for a, s in pairs:
        lines += [
            f"  %sum.{a}.{s} = call i32 @llvm.vector.reduce.add.v{lanes}i32({acc} %a2.{a}.{s})",
            f"  %bp.{a}.{s} = getelementptr i32, ptr %bias, i64 %jq{s}",
            f"  %b.{a}.{s} = load i32, ptr %bp.{a}.{s}",
            f"  %s.{a}.{s} = sub i32 %sum.{a}.{s}, %b.{a}.{s}",
            f"  %oi0.{a}.{s} = mul i64 %jq{s}, %n",
            f"  %oi.{a}.{s} = add i64 %oi0.{a}.{s}, %ia{a}",
            f"  %op.{a}.{s} = getelementptr i32, ptr %out, i64 %oi.{a}.{s}",
            f"  store i32 %s.{a}.{s}, ptr %op.{a}.{s}",
        ]
    return "\n".join([*lines, "  ret void", "}"])


def _loop(t: str, start: str, limit: str, step: int, pred: str, body: list[str]) -> list[str]:
    # IR of a loop named t: counter %t.at from ``start`` (coming from block ``pred``) while at least
    # ``step`` are left before ``limit``, running ``body`` each time; it leaves from block t.done.
    return [
        f"  br label %{t}",
        f"{t}:",
        f"  %{t}.at = phi i64 [{start}, %{pred}], [%{t}.next, %{t}.latch]",
        f"  %{t}.left = sub i64 {limit}, %{t}.at",
        f"  %{t}.go = icmp uge i64 %{t}.left, {step}",
        f"  br i1 %{t}.go, label %{t}.body, label %{t}.done",
        f"{t}.body:",
        *body,
        f"  br label %{t}.latch",
        f"{t}.latch:",
        f"  %{t}.next = add i64 %{t}.at, {step}",
        f"  br label %{t}",
        f"{t}.done:",
    ]


def kernel_ir(isa: str) -> str:
    """LLVM IR of ``scores(codes, query, absquery, bias, out, n, r, width)`` for one instruction set.

    ``out[q * n + i] = sum_j codes[i * width + j] * query[q * width + j] - bias[q]``, where the VNNI
    kernels see each bank byte as ``c + 128`` and need ``bias = 128 * sum(q)`` (0 otherwise);
    ``absquery`` is ``|query|``; ``width`` is a multiple of the chunk and n, r >= 1. The bank is
    cut into the instruction set's ``rows`` parts, read side by side a row of each at a time,
    and every such block of rows is scored against four queries per pass while four are left,
    then two, then one: each chunk of the block is loaded once per pass.
    """
    spec = ISAS[isa]
    args = "ptr %codes, ptr %query, ptr %absquery, ptr %bias, ptr %out, i64 %n, i64 %width"
    lines, start, pred = [], "0", "entry"
    for rows in spec.rows:  # rows [start, start + rows * h) in `rows` parts of h, side by side
        t = f"r{rows}"
        passes, qstart, qpred = [], "0", f"{t}.body"
        for queries in QUERY_BLOCKS:
            call = (
                f"  call void @tile.{rows}.{queries}({args}, i64 %{t}.at, i64 %{t}.h, i64 %q{t}.{queries}.at)"
            )
            passes += _loop(f"q{t}.{queries}", qstart, "%r", queries, qpred, [call])
            qstart, qpred = f"%q{t}.{queries}.at", f"q{t}.{queries}.done"
        lines += [
            f"  %{t}.rest = sub i64 %n, {start}",
            f"  %{t}.h = udiv i64 %{t}.rest, {rows}",
            f"  %{t}.end = add i64 {start}, %{t}.h",
            *_loop(t, start, f"%{t}.end", 1, pred, passes),
            f"  %{t}.used = mul i64 %{t}.h, {rows}",
            f"  %{t}.stop = add i64 {start}, %{t}.used",
        ]
        start, pred = f"%{t}.stop", f"{t}.done"
    tiles = [_tile(spec, rows, queries) for rows in spec.rows for queries in QUERY_BLOCKS]
    return "\n".join(
        [
            _DECLARE,
            *tiles,
            "define void @scores(ptr noalias nocapture readonly %codes,",
            "    ptr noalias nocapture readonly %query, ptr noalias nocapture readonly %absquery,",
            "    ptr noalias nocapture readonly %bias,",
            "    ptr noalias nocapture %out, i64 %n, i64 %r, i64 %width) {",
            "entry:",
            *lines,
            "  ret void",
            "}",
        ]
    )
