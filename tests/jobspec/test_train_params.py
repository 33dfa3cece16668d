"""The one train parameter spec: the CLI flags, the settings objects, the web form and the job runner all take
their defaults, bounds and help from it."""

from __future__ import annotations

import dataclasses

import pytest

from e5studio.cli import build_parser
from e5studio.control.job_launch import train_args
from e5studio.errors import InputError, ParamError
from e5studio.jobs.train.settings import RunOptions, TrainSettings
from e5studio.jobspec.batch_params import BATCH_EMBED_PARAMS
from e5studio.jobspec.params import validate_params
from e5studio.jobspec.train_params import ALL_PARAMS, HYPERPARAMETERS, RUN_PARAMS, TRAIN_PARAMS
from e5studio.web.jobs import train_params


def _train_args() -> dict[str, object]:
    return vars(build_parser().parse_args(["train", "--dataset", "d", "--model", "m", "--output", "o"]))


def test_every_hyperparameter_is_a_train_settings_field_and_nothing_else() -> None:
    fields = {f.name: f for f in dataclasses.fields(TrainSettings)}
    assert set(fields) == {p.field for p in HYPERPARAMETERS.values()}


def test_argparse_settings_and_form_defaults_are_the_specs() -> None:
    args = _train_args()
    for name, param in ALL_PARAMS.items():
        assert args[name] == param.default, name
    settings = TrainSettings()
    for param in HYPERPARAMETERS.values():
        assert getattr(settings, param.field) == param.default, param.name
    options = RunOptions()
    for name in ("save_every", "keep_checkpoints"):
        assert getattr(options, name) == RUN_PARAMS[name].default
    assert TrainSettings.from_args(build_parser().parse_args(
        ["train", "--dataset", "d", "--model", "m", "--output", "o"])) == TrainSettings()
    form = {f.name: f for f in train_params()}
    assert list(form) == list(TRAIN_PARAMS)
    for name, param in TRAIN_PARAMS.items():
        assert form[name].default == ("" if param.default is None else str(param.default))
        assert form[name].help.startswith(param.help)


def test_cli_help_is_the_specs() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    train = sub.choices["train"]  # type: ignore[index]
    helps = {a.dest: a.help for a in train._actions}
    for name, param in ALL_PARAMS.items():
        assert str(helps[name]).startswith(param.help), name


def test_the_runner_and_the_settings_refuse_what_the_spec_refuses() -> None:
    for name, bad in (("epochs", 0), ("lr", 0.0), ("warmup_ratio", 1.0), ("seed", 2**32), ("passage_max_length", 1)):
        with pytest.raises(ParamError, match=f"^{name}: must be ") as caught:
            validate_params({name: bad}, TRAIN_PARAMS)
        assert caught.value.field == name
        with pytest.raises(InputError, match=f"^{name}: must be "):
            TrainSettings(**{ALL_PARAMS[name].field: bad})  # type: ignore[arg-type]
    with pytest.raises(InputError, match="^precision: must be one of auto, fp32, bf16, fp16"):
        TrainSettings(precision="fp8")
    assert TrainSettings(passage_max_length=None).passage_max_length is None  # the model's own maximum
    assert validate_params({"precision": "bf16"}, {"precision": ALL_PARAMS["precision"]}) == {"precision": "bf16"}


def test_the_runner_passes_every_form_value_as_the_commands_flag() -> None:
    """What the runner starts is what the CLI parses back: each form parameter arrives under its own name."""
    values = {"epochs": 2, "lr": 0.001, "threads": 3, "save_every": 0, "passage_max_length": 128}
    checked = validate_params(values, TRAIN_PARAMS)
    job = dataclasses.make_dataclass("J", ["id", "dataset_id", "model", "output", "params"])(
        "j1", "ds", "m", "/o", checked)
    args = vars(build_parser().parse_args(train_args(job, __import__("pathlib").Path("/data"), resume=False)))
    assert {name: args[name] for name in TRAIN_PARAMS} == checked


def test_batch_embed_defaults_are_the_specs() -> None:
    embed = vars(build_parser().parse_args(["embed-corpus", "in.jsonl", "-o", "out", "--model", "m"]))
    assert {name: embed[name] for name in BATCH_EMBED_PARAMS} == {n: p.default for n, p in BATCH_EMBED_PARAMS.items()}
