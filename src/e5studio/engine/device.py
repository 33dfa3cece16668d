"""Where and in which dtype the engine runs: ``auto``/``cpu``/``cuda[:N]`` and ``auto``/fp32/fp16/bf16."""

from __future__ import annotations

import torch

from e5studio.errors import ModelError
from e5studio.vocabulary import DTYPES

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return TORCH_DTYPES[dtype]
    except KeyError:
        raise ModelError(f"unknown dtype {dtype!r} ({', '.join(DTYPES)})") from None
