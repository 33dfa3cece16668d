"""What this CPU computes natively, read once (no torch import), and the precisions and kernels that follows.

The CPU under the project varies (AVX2-only machines, AVX-512 with VNNI and AVX512-BF16, AMX), so the runtime
table (:mod:`e5studio.engine.runtimes`) reads these features once when a model loads:

- **bf16** is offered only where the CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16): there oneDNN's
  bf16 matmul with fp32 accumulation runs at about twice the fp32 rate; elsewhere oneDNN emulates it, some
  hundred times slower than fp32, so the precision is refused instead.
- **int8** runs on FBGEMM everywhere on x86-64 (VNNI's one-instruction u8 x s8 dot product where present,
  AVX2's two-instruction one elsewhere); ONNX Runtime's MLAS picks the same way for the compiled single-query
  graph.

:func:`cpu_features` is the one reading of ``/proc/cpuinfo`` (Linux x86-64); elsewhere (macOS, ARM) the
features are all off and only fp32 (and int8 where torch has FBGEMM) is offered.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

from e5studio.errors import InputError
from e5studio.vocabulary import PRECISIONS

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuFeatures:
    """The instruction sets the engine's kernels choose by."""

    x86_64: bool = False
    avx2: bool = False
    avx512: bool = False  # AVX-512 foundation + BW/VL (what oneDNN's and FBGEMM's AVX-512 kernels need)
    vnni: bool = False  # AVX512-VNNI or AVX-VNNI: one-instruction u8 x s8 dot products (int8)
    bf16: bool = False  # AVX512-BF16 or AMX-BF16: native bf16 dot products with fp32 accumulation
    amx: bool = False  # AMX tiles (bf16 and int8)

    @property
    def kernel_set(self) -> str:
        """The widest kernels this CPU runs, in one word: ``amx``, ``avx512-bf16``, ``avx512-vnni``,
        ``avx512``, ``avx-vnni``, ``avx2`` or ``baseline``."""
        if self.amx:
            return "amx"
        if self.avx512 and self.bf16:
            return "avx512-bf16"
        if self.avx512 and self.vnni:
            return "avx512-vnni"
        if self.avx512:
            return "avx512"
        if self.avx2 and self.vnni:
            return "avx-vnni"
        return "avx2" if self.avx2 else "baseline"

    @property
    def precisions(self) -> tuple[str, ...]:
        """The inference precisions offered on this CPU, in the vocabulary's order: fp32 always, bf16 where
        native, int8 on x86-64 (FBGEMM and MLAS)."""
        offered = {"fp32", *(["bf16"] if self.bf16 else []), *(["int8"] if self.x86_64 else [])}
        return tuple(p for p in PRECISIONS if p in offered)

    def describe(self) -> str:
        """One line for ``embed --verbose``, the server's start line and ``/v1/models``."""
        native = "native" if self.bf16 else "not native"
        return f"{self.kernel_set} kernels (int8 {'VNNI' if self.vnni else 'without VNNI'}, bf16 {native})"


def parse_flags(flags: set[str], machine: str = "x86_64") -> CpuFeatures:
    """The features named by a ``/proc/cpuinfo`` flags line (as a set of words)."""
    x86 = machine.lower() in ("x86_64", "amd64")
    return CpuFeatures(
        x86_64=x86,
        avx2=x86 and "avx2" in flags,
        avx512=x86 and {"avx512f", "avx512bw", "avx512vl"} <= flags,
        vnni=x86 and bool({"avx512_vnni", "avx_vnni"} & flags),
        bf16=x86 and bool({"avx512_bf16", "amx_bf16"} & flags),
        amx=x86 and {"amx_tile", "amx_bf16"} <= flags,
    )


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's features, read once per process."""
    machine = platform.machine()
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return CpuFeatures(x86_64=machine.lower() in ("x86_64", "amd64"))
    for line in text.splitlines():
        if line.startswith("flags"):
            return parse_flags(set(line.partition(":")[2].split()), machine)
    return CpuFeatures(x86_64=machine.lower() in ("x86_64", "amd64"))


def unsupported(precision: str, features: CpuFeatures) -> str | None:
    """Why ``precision`` is not offered on a CPU with ``features`` (None: it is)."""
    if precision in features.precisions:
        return None
    if precision == "bf16":
        return (f"precision bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this one has "
                f"{features.kernel_set} kernels, where bf16 is emulated, about 100x slower than fp32: use fp32 "
                f"(exact) or int8 (faster) here")
    if precision == "int8":
        return "precision int8 needs an x86-64 CPU (FBGEMM's and MLAS's int8 kernels): use fp32 here"
    return f"unknown precision {precision!r}"


def refuse_unoffered(precision: str) -> None:
    """An endpoint asked for with a precision this CPU does not offer is refused when it is created (InputError,
    400, with the reason), not accepted and then failed at load; unknown names are the store's check."""
    reason = unsupported(precision, cpu_features()) if precision in PRECISIONS else None
    if reason:
        raise InputError(reason)
