"""Device and dtype choice, and who sets torch's threads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import e5studio
from e5studio.engine.device import pick_device, pick_dtype, set_threads
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


def test_set_threads_sets_the_process_count_and_refuses_none() -> None:
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="at least 1"):
            set_threads(0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_only_the_device_module_sets_torch_threads() -> None:
    """Entry points call ``set_threads``; no other module of the package changes torch's thread counts."""
    package = Path(e5studio.__file__).parent
    setters = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                     if re.search(r"set_num(_interop)?_threads\(", p.read_text(encoding="utf-8")))
    assert setters == ["engine/device.py"]
