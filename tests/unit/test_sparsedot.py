"""Sparse decoding: compiled kernels give the portable kernel's bits; a batch gives each volume's own."""

import numpy as np
import pytest

from rtdecode.numerics.kernels import sparse_blocks
from rtdecode.numerics.llvmjit import optimised, target_machine
from rtdecode.numerics.sparsedot import (
    COLUMNS,
    LANES,
    SparseMap,
    _compiled,
    decode_ir,
    kernels,
    lanes_per_pass,
)


def _blocks(rng, blocks, k, n_inputs):
    w = rng.standard_normal((blocks, k, LANES)).astype(np.float32)
    w[0, :, 3] = 0  # a unit that reads nothing: its bias alone
    w[-1, :, -1] = np.float32(3e38)  # products that overflow to inf
    idx = rng.integers(0, n_inputs, w.shape, dtype=np.int32)
    idx[0, 0, 0], idx[-1, :, -1] = 5, 6  # x[5] is NaN, x[6] large
    b = rng.standard_normal(blocks * LANES).astype(np.float32)
    return w, idx, b


@pytest.mark.parametrize("columns", COLUMNS)
@pytest.mark.parametrize("lanes", [4, 8, 16])
def test_compiled_kernels_give_the_portable_kernels_bits(columns, lanes):
    rng = np.random.default_rng(columns * 100 + lanes)
    for blocks, k in ((1, 1), (3, 7), (5, 130)):
        w, idx, b = _blocks(rng, blocks, k, 57)
        x = (rng.standard_normal((57, columns)) * 10 ** rng.uniform(-3, 3, (57, 1))).astype(np.float32)
        x[5, 0], x[6] = np.nan, 1e5  # carried to the units that read them, in both
        want, got = (
            np.empty((blocks * LANES, columns), np.float32),
            np.full((blocks * LANES, columns), 7.0, np.float32),
        )
        sparse_blocks(w, idx, x, b, want)
        _compiled(columns, lanes)(w, idx, x, b, got)
        np.testing.assert_array_equal(got, want)
        assert np.isnan(want).any() and np.isinf(want).any()


def test_the_kernels_in_use_are_checked_and_there_is_one_per_column_count():
    assert sorted(kernels()) == sorted(COLUMNS)


def test_kernels_for_a_cpu_without_avx512_compile_to_its_registers():
    for columns in COLUMNS:
        machine = target_machine("znver3")  # AVX2, 16 vector registers
        asm = machine.emit_assembly(optimised(decode_ir(columns, lanes_per_pass(columns, {"avx2"})), machine))
        assert "vmul" in asm and "zmm" not in asm


def _dense(rng, n_inputs, n_units, per_unit):
    W = np.zeros((n_inputs, n_units), np.float32)
    for u in range(n_units):
        W[rng.choice(n_inputs, per_unit, replace=False), u] = rng.standard_normal(per_unit)
    return W


@pytest.mark.parametrize("n_units", [1, 16, 37])
def test_a_volume_decoded_in_any_batch_gets_the_bits_it_gets_alone(n_units):
    rng = np.random.default_rng(n_units)
    W = _dense(rng, 300, n_units, 20)
    b = rng.standard_normal(n_units).astype(np.float32)
    nz = W != 0
    k = int(nz.sum(0).max())
    weights, rows = np.zeros((n_units, k), np.float32), np.zeros((n_units, k), np.int64)
    for u in range(n_units):
        r = np.flatnonzero(nz[:, u])
        weights[u, : r.size], rows[u, : r.size] = W[r, u], r
    m = SparseMap(weights, rows, b, 300)
    xs = rng.standard_normal((40, 300)).astype(np.float32)
    alone = np.stack([m.apply(x[None])[0] for x in xs])
    np.testing.assert_allclose(alone, xs.astype(np.float64) @ W + b, rtol=1e-5, atol=1e-5)
    for n in (2, 3, 5, 8, 9, 16, 17, 40):  # every pass width, and batches that take several
        np.testing.assert_array_equal(m.apply(xs[:n]), alone[:n])
    assert m.apply(xs[:0]).shape == (0, n_units)


@pytest.mark.parametrize("pieces", [1, 2, 3, 100])
def test_a_map_split_into_pieces_writes_the_bits_of_the_whole_in_any_order(pieces):
    rng = np.random.default_rng(pieces)
    W = _dense(rng, 200, 70, 15)  # 5 blocks, the last one partly padding
    nz = W != 0
    k = int(nz.sum(0).max())
    weights, rows = np.zeros((70, k), np.float32), np.zeros((70, k), np.int64)
    for u in range(70):
        r = np.flatnonzero(nz[:, u])
        weights[u, : r.size], rows[u, : r.size] = W[r, u], r
    m = SparseMap(weights, rows, rng.standard_normal(70), 200)
    for n in (1, 5, 19):  # one pass, and two (16 + 3 volumes)
        xs = rng.standard_normal((n, 200)).astype(np.float32)
        out = np.full((n, 70), np.nan, np.float32)
        calls = m.tasks(xs, out, pieces)
        passes = 1 if n <= 16 else 2
        assert len(calls) == passes * min(pieces, 5)
        for call in calls[::-1] + calls[:1]:  # any order, and one call twice
            call()
        np.testing.assert_array_equal(out, m.apply(xs))
    with pytest.raises(ValueError, match=r"out must be float32 \(2, 70\)"):
        m.tasks(xs[:2], np.empty((2, 69), np.float32))


def test_a_sparse_map_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="0..9"):
        SparseMap(np.ones((2, 3)), np.full((2, 3), 10), np.zeros(2), 10)
    with pytest.raises(ValueError, match="do not match"):
        SparseMap(np.ones((2, 3)), np.zeros((2, 2)), np.zeros(2), 10)
    m = SparseMap(np.ones((2, 3)), np.zeros((2, 3)), np.zeros(2), 10)
    with pytest.raises(ValueError, match=r"\(n, 10\)"):
        m.apply(np.zeros((1, 9), np.float32))
