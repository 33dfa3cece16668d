"""The settings objects of a fine-tuning run, built from the one parameter spec
(:mod:`e5studio.jobspec.train_params`): defaults and bounds come from there; a test checks that every
hyperparameter of the spec is a field here and nothing else is."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from e5studio.errors import InputError
from e5studio.jobspec.train_params import HYPERPARAMETERS, RUN_PARAMS, SELECTION_PARAMS, parse_interpolation

_SPEC = {**HYPERPARAMETERS, **RUN_PARAMS, **SELECTION_PARAMS}


def _int(name: str) -> Any:
    default = _SPEC[name].default
    assert isinstance(default, int)
    return default


def _float(name: str) -> Any:
    default = _SPEC[name].default
    assert isinstance(default, float)
    return default


def _str(name: str) -> Any:
    default = _SPEC[name].default
    assert isinstance(default, str)
    return default


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters (E5 fine-tuning defaults, see the spec for each one's meaning); a resumed run must use
    the same ones. ``passage_max_length`` None: the model's own maximum."""

    epochs: int = _int("epochs")
    batch_size: int = _int("batch_size")
    train_n_passages: int = _int("train_n_passages")
    learning_rate: float = _float("lr")
    warmup_ratio: float = _float("warmup_ratio")
    weight_decay: float = _float("weight_decay")
    max_grad_norm: float = _float("max_grad_norm")
    temperature: float = _float("temperature")
    distill_weight: float = _float("distill_weight")
    distill_temperature: float = _float("distill_temperature")
    seed: int = _int("seed")
    query_max_length: int = _int("query_max_length")
    passage_max_length: int | None = _int("passage_max_length")
    precision: str = _str("precision")

    def __post_init__(self) -> None:
        for param in HYPERPARAMETERS.values():
            value = getattr(self, param.field)
            if value is None and param.field == "passage_max_length":
                continue
            param.check(value)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainSettings:
        """From ``e5studio train``'s parsed flags (named as in the spec)."""
        return cls(**{p.field: getattr(args, p.name) for p in HYPERPARAMETERS.values()})


@dataclass(frozen=True)
class RunOptions:
    """How a run executes; none of these change the trained weights (on a given device)."""

    device: str = "auto"
    gradient_checkpointing: bool = False
    save_every: int = _int("save_every")  # also at each epoch end; 0 = epoch ends only
    keep_checkpoints: int = _int("keep_checkpoints")
    eval_max_length: int | None = None  # None: the model's serving length
    eval_batch_tokens: int = 8192
    progress: bool = True
    interpolate: str = _str("interpolate")  # "auto" or a weight in (0, 1] (selection.py)
    max_ood_loss: float = _float("max_ood_loss")

    def __post_init__(self) -> None:
        try:
            parse_interpolation(self.interpolate)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        SELECTION_PARAMS["max_ood_loss"].check(self.max_ood_loss)
