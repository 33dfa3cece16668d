"""The words every layer shares, defined once: E5 prefixes, precisions, dtypes, CPU runtimes.

This module sits on the lowest floor (it imports only :mod:`e5studio.errors`), so the engine, the control
store, the jobs, serving and the web UI all import these names from here instead of writing them again.
File and folder names of job outputs and datasets live in :mod:`e5studio.jobspec.layout`.
"""

from __future__ import annotations

from typing import Literal

from e5studio.errors import InputError

# E5's role prefixes: queries and passages are embedded with different prefixes (intfloat/e5-large-v2's card)
InputType = Literal["query", "passage"]
QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "
PREFIXES: dict[str, str] = {"query": QUERY_PREFIX, "passage": PASSAGE_PREFIX}
INPUT_TYPES = ("query", "passage", "none")  # "none": the text is embedded as sent


def prefix_of(input_type: str | None) -> str:
    """The prefix ``input_type`` adds ("" for ``None`` or ``"none"``); InputError naming the choices."""
    if input_type is None or input_type == "none":
        return ""
    try:
        return PREFIXES[input_type]
    except KeyError:
        raise InputError(f"input_type must be one of {', '.join(INPUT_TYPES)}, got {input_type!r}") from None


def add_prefix(text: str, input_type: str | None) -> str:
    """``text`` with the E5 prefix of ``input_type`` unless it already starts with it (never twice)."""
    prefix = prefix_of(input_type)
    return text if not prefix or text.startswith(prefix) else prefix + text


# inference precisions of the engine (``--precision``), the words the store accepts; which of them a machine
# offers (bf16 only where the CPU has native bf16) is the engine's to say (``engine/cpu.py``)
PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT_PRECISION = "fp32"
PRECISION_HELP = {
    "fp32": "fp32: the model's own arithmetic (exact vectors)",
    "bf16": "bf16 (CPUs with native bf16): dense layers in bf16 with fp32 sums, vectors within cosine 0.9999 of fp32",
    "int8": "int8 (CPU): dense layers in int8, faster, vectors within cosine 0.99 of fp32",
}

# torch dtypes by name (``--dtype``); "auto": fp32 on CPU, bf16 on CUDA where supported, else fp16
DTYPES = ("auto", "float32", "float16", "bfloat16")

# training's mixed precision (``e5studio train --precision``)
TRAIN_PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# the CPU fp32 runtime choice (``--cpu-runtime``)
CPU_RUNTIMES = ("auto", "torch", "onnxruntime")


def one_of(words: tuple[str, ...]) -> str:
    """The words as an error message lists them: ``a, b or c``."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
