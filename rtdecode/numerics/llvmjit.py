"""LLVM IR compiled for this CPU at start-up (llvmlite, which numba brings).

The kernels whose instructions numba does not choose well (:mod:`rtdecode.numerics.intdot`,
:mod:`rtdecode.numerics.sparsedot`) are written as IR text and compiled here, with LLVM's ``-O3``
pipeline, for the host CPU and the features it reports.
"""

from __future__ import annotations

from functools import cache

import llvmlite.binding as llvm


@cache
def _init() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


def host_features() -> set[str]:
    """The CPU features this host reports (LLVM's names: ``avx2``, ``avx512f``, ``avx512vnni``...)."""
    return {k for k, v in llvm.get_host_cpu_features().items() if v}


def target_machine(cpu: str | None = None) -> llvm.TargetMachine:
    """The host with the features it reports (a VM may hide some its CPU model has), or a named CPU."""
    _init()
    features = llvm.get_host_cpu_features().flatten() if cpu is None else ""
    return llvm.Target.from_triple(llvm.get_process_triple()).create_target_machine(
        cpu=cpu or llvm.get_host_cpu_name(), features=features, opt=3
    )


def optimised(ir: str, machine: llvm.TargetMachine) -> llvm.ModuleRef:
    """``ir`` parsed, verified and run through LLVM's ``-O3`` pipeline for ``machine``."""
    _init()
    module = llvm.parse_assembly(ir)
    module.verify()
    builder = llvm.create_pass_builder(machine, llvm.PipelineTuningOptions(speed_level=3))
    builder.getModulePassManager().run(module, builder)
    return module


def compile_ir(ir: str) -> llvm.ExecutionEngine:
    """Machine code for ``ir`` on this host; keep the engine alive while its functions are called.

    A function's address is ``engine.get_function_address(name)``.
    """
    machine = target_machine()
    engine = llvm.create_mcjit_compiler(optimised(ir, machine), machine)
    engine.finalize_object()
    return engine
