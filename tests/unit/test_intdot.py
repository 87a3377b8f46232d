"""The int8 dot-product kernels: each against exact int64 products, and the choice among them."""

import ctypes
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from rtdecode.numerics import intdot

HOST = intdot.available()


def _exact(codes, query):
    return query.astype(np.int64) @ codes.astype(np.int64).T


@pytest.mark.parametrize("isa", HOST)
@pytest.mark.parametrize(
    ("n", "r", "width"), [(1, 1, 64), (67, 3, 192), (33, 7, 128), (1000, 10, 1024), (5, 12, 4096)]
)
def test_every_kernel_this_cpu_runs_gives_the_exact_integer_sums(isa, n, r, width):
    rng = np.random.default_rng(n + r)
    codes = rng.integers(-127, 128, (n, width), dtype=np.int8)
    query = rng.integers(-127, 128, (r, width), dtype=np.int8)
    codes[0] = 127  # the extremes: no lane of any kernel may saturate or wrap
    query[0] = -127
    if r > 1:
        query[1] = 127
    out = np.full((r, n), -1, np.int32)
    intdot.compile_kernel(isa)(codes, query, out)
    np.testing.assert_array_equal(out, _exact(codes, query))


def test_empty_inputs_leave_nothing_to_do():
    k = intdot.selected()
    k(np.zeros((0, 64), np.int8), np.zeros((2, 64), np.int8), np.empty((2, 0), np.int32))
    out = np.empty((0, 3), np.int32)
    k(np.zeros((3, 64), np.int8), np.zeros((0, 64), np.int8), out)


def test_the_fastest_kernel_this_cpu_has_is_selected_and_agrees():
    k = intdot.selected()
    assert k.isa == HOST[0]
    assert intdot.agrees_with_portable(k, seed=5)


def test_a_kernel_with_wrong_sums_is_caught_by_the_start_up_check():
    portable = intdot.compile_kernel("portable").function

    @intdot.SIGNATURE
    def off_by_one(codes, query, absquery, bias, out, n, r, width):
        portable(codes, query, absquery, bias, out, n, r, width)
        ctypes.cast(out, ctypes.POINTER(ctypes.c_int32))[r * n - 1] += 1

    assert intdot.agrees_with_portable(intdot.compile_kernel("portable"))
    assert not intdot.agrees_with_portable(intdot.Int8Kernel("broken", off_by_one))


@pytest.mark.parametrize(
    ("isa", "cpu", "instruction"),
    [
        ("avx512vnni", "icelake-server", r"\tvpdpbusd\t.*%zmm"),
        ("avxvnni", "alderlake", r"\{vex\}\tvpdpbusd\t.*%ymm"),
        ("avx2", "haswell", r"\tvpmaddubsw\t.*%ymm"),
    ],
)
def test_each_kernel_compiles_to_its_instruction_on_a_cpu_that_has_it(isa, cpu, instruction):
    # What a machine with VNNI runs, seen from one without: the instruction in the inner loop.
    asm = intdot.assembly(isa, cpu)
    assert re.search(instruction, asm)
    assert not re.search(r"vpmovsxbw", asm)  # no widening to int16 on the way


def test_a_kernel_this_cpu_lacks_is_refused_not_run():
    missing = [isa for isa in ("avx512vnni", "avxvnni", "avx2") if isa not in HOST]
    if not missing:
        pytest.skip("this CPU has every kernel's instructions")
    with pytest.raises(RuntimeError, match="this CPU lacks"):
        intdot.compile_kernel(missing[0])


def test_inputs_the_kernels_cannot_take_are_refused():
    k = intdot.selected()
    with pytest.raises(TypeError, match="int8"):
        k(np.zeros((2, 64), np.int16), np.zeros((1, 64), np.int8), np.empty((1, 2), np.int32))
    with pytest.raises(ValueError, match="multiple of 64"):
        k(np.zeros((2, 60), np.int8), np.zeros((1, 60), np.int8), np.empty((1, 2), np.int32))
    with pytest.raises(ValueError, match="one width"):
        k(np.zeros((2, 64), np.int8), np.zeros((1, 128), np.int8), np.empty((1, 2), np.int32))
    with pytest.raises(ValueError, match="out"):
        k(np.zeros((2, 64), np.int8), np.zeros((1, 64), np.int8), np.empty((2, 1), np.int32))
    with pytest.raises(ValueError, match="C-contiguous"):
        k(np.zeros((2, 128), np.int8)[:, ::2], np.zeros((1, 64), np.int8), np.empty((1, 2), np.int32))


@pytest.mark.parametrize("name", ["portable", "avx9000"])
def test_the_kernel_can_be_named_in_the_environment(name):
    code = "from rtdecode.numerics.intdot import selected; print(selected().isa)"
    env = os.environ | {"RTDECODE_INT8_KERNEL": name}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if name == "portable":
        assert done.returncode == 0 and done.stdout.strip() == "portable"
    else:
        assert done.returncode != 0 and "RTDECODE_INT8_KERNEL must be one of" in done.stderr
