"""Broken variants of a good checkpoint, each with the words its ModelError message must contain.

Shared by the engine tests (``Embedder.load`` raises ModelError) and the CLI tests (exit code 2, the same
message on stderr, no traceback).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file

from tests.reference import copy_checkpoint


@dataclass(frozen=True)
class Broken:
    model: str  # what is passed as the model name
    message_parts: tuple[str, ...]  # every one must appear in the error message


def _rewrite_weights(directory: Path, edit: Callable[[dict], None]) -> Path:
    file = directory / "model.safetensors"
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})
    return file


def missing_directory(good: Path, tmp: Path) -> Broken:
    path = tmp / "no-such-model"
    return Broken(str(path), (str(path), "does not exist"))


def no_weights_file(good: Path, tmp: Path) -> Broken:
    directory = copy_checkpoint(good, tmp / "ckpt")
    (directory / "model.safetensors").unlink()
    return Broken(str(directory), (str(directory), "no weights file", "model.safetensors", "pytorch_model.bin"))


WRONG_SHAPE_TENSOR = "encoder.layer.1.intermediate.dense.weight"


def wrong_shape(good: Path, tmp: Path) -> Broken:
    directory = copy_checkpoint(good, tmp / "ckpt")

    def edit(tensors: dict) -> None:
        tensor = tensors[WRONG_SHAPE_TENSOR]
        assert tuple(tensor.shape) == (64, 32)  # the tiny shape: intermediate 64, hidden 32
        tensors[WRONG_SHAPE_TENSOR] = tensor.reshape(32, 64).contiguous()

    file = _rewrite_weights(directory, edit)
    return Broken(str(directory), (str(file), WRONG_SHAPE_TENSOR, "(32, 64)", "(64, 32)"))


MISSING_TENSOR = "encoder.layer.1.attention.self.value.bias"


def missing_tensor(good: Path, tmp: Path) -> Broken:
    directory = copy_checkpoint(good, tmp / "ckpt")
    file = _rewrite_weights(directory, lambda tensors: tensors.pop(MISSING_TENSOR))
    return Broken(str(directory), (str(file), MISSING_TENSOR, "missing"))


EXTRA_TENSOR = "encoder.layer.2.attention.self.query.weight"  # the tiny model has layers 0 and 1 only


def extra_tensor(good: Path, tmp: Path) -> Broken:
    directory = copy_checkpoint(good, tmp / "ckpt")

    def edit(tensors: dict) -> None:
        tensors[EXTRA_TENSOR] = tensors["encoder.layer.1.attention.self.query.weight"].clone()

    file = _rewrite_weights(directory, edit)
    return Broken(str(directory), (str(file), EXTRA_TENSOR, "unexpected"))


def _with_model_type(model_type: str, architecture: str) -> Callable[[Path, Path], Broken]:
    def build(good: Path, tmp: Path) -> Broken:
        directory = copy_checkpoint(good, tmp / "ckpt")
        config_file = directory / "config.json"
        config = json.loads(config_file.read_text())
        config.update(model_type=model_type, architectures=[architecture])
        config_file.write_text(json.dumps(config))
        return Broken(str(directory), (str(config_file), "unsupported architecture", repr(model_type)))

    return build


def missing_config(good: Path, tmp: Path) -> Broken:
    directory = copy_checkpoint(good, tmp / "ckpt")
    (directory / "config.json").unlink()
    return Broken(str(directory), (str(directory / "config.json"), "not found"))


BROKEN_CHECKPOINTS: dict[str, Callable[[Path, Path], Broken]] = {
    "missing-directory": missing_directory,
    "no-weights-file": no_weights_file,
    "wrong-shape": wrong_shape,
    "missing-tensor": missing_tensor,
    "extra-tensor": extra_tensor,
    "xlm-roberta": _with_model_type("xlm-roberta", "XLMRobertaModel"),
    "t5": _with_model_type("t5", "T5EncoderModel"),
    "missing-config": missing_config,
}
