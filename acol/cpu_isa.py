"""The instruction set the CPU kernels may use: the same bytes from every x86-64 machine with AVX2.

Why: PyTorch (ATen), oneDNN and MKL each pick their kernels by the CPU's instruction set, and kernels of
different widths round differently, so the same run trains other weights on an AVX-512 machine than on an
AVX2 one (measured: benchmarks/README.md, "CPU instruction sets"). Capping all three at one level makes the
run's bytes a function of the inputs and the thread counts (which the params fix), not of the machine.

The level comes from ``ACOL_CPU_ISA`` (default ``avx2``): ``avx2`` (any x86-64 CPU since 2013-2015),
``baseline`` (any x86-64 CPU, much slower) or ``native`` (leave the environment alone: fastest, bytes
depend on the machine). The variables must be set before the first kernel runs in a process; `pin_cpu_isa`
is called first thing in each stage (`acol.stages.cli.run_stage`) and in each Ray worker that runs torch,
and Ray workers started by this process inherit them (`cpu_isa_env` goes into their runtime environment).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from acol.errors import UserError

__all__ = ["CPU_ISA_ENV", "LEVELS", "CpuIsaError", "cpu_isa_env", "pin_cpu_isa"]

log = logging.getLogger(__name__)

CPU_ISA_ENV = "ACOL_CPU_ISA"
DEFAULT_LEVEL = "avx2"

# level -> the variable each library reads for its kernel choice, and the ATen capability it should report
LEVELS: dict[str, dict[str, str]] = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"},
    "baseline": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"},
}
NATIVE = "native"


class CpuIsaError(UserError, ValueError):
    """``ACOL_CPU_ISA`` names no level."""


def _level(environ: Mapping[str, str]) -> str:
    level = environ.get(CPU_ISA_ENV, DEFAULT_LEVEL).strip().lower() or DEFAULT_LEVEL
    if level != NATIVE and level not in LEVELS:
        raise CpuIsaError(f"{CPU_ISA_ENV}={level!r}: choose one of {', '.join([*LEVELS, NATIVE])}")
    return level


def cpu_isa_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a process (or a Ray worker) needs for the chosen level; empty for ``native``."""
    environ = os.environ if environ is None else environ
    level = _level(environ)
    return {} if level == NATIVE else {CPU_ISA_ENV: level, **LEVELS[level]}


def pin_cpu_isa() -> str:
    """Set this process's kernel variables for the chosen level; returns the level (one word, for logs).

    Idempotent. If torch had already chosen its kernels (a capability other than the level's), it warns:
    the pin came too late in this process, and its bytes may be the machine's own.
    """
    wanted = cpu_isa_env()
    os.environ.update(wanted)
    level = wanted.get(CPU_ISA_ENV, NATIVE)
    torch = sys.modules.get("torch")
    if wanted and torch is not None:
        got = torch.backends.cpu.get_cpu_capability().lower()
        if got not in (wanted["ATEN_CPU_CAPABILITY"], "default"):  # default: a CPU below the level
            log.warning(
                "%s=%s came after torch chose its kernels (%s) in this process: its results may differ "
                "from another machine's",
                CPU_ISA_ENV,
                level,
                got,
            )
    return level
