"""Device and dtype choice."""

from __future__ import annotations

import pytest
import torch

from e5studio.engine.device import pick_device, pick_dtype
from e5studio.errors import ModelError


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    with pytest.raises(ModelError, match="unknown device 'tpu9'"):
        pick_device("tpu9")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is missing")
def test_cuda_without_cuda_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="CUDA is not available"):
        pick_device("cuda")


def test_pick_dtype() -> None:
    cpu = torch.device("cpu")
    assert pick_dtype("auto", cpu) == torch.float32
    assert pick_dtype("bfloat16", cpu) == torch.bfloat16
    assert pick_dtype("float16", cpu) == torch.float16
    with pytest.raises(ModelError, match="unknown dtype 'float64'"):
        pick_dtype("float64", cpu)
