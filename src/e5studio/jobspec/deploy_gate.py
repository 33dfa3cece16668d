"""The deploy gate: a fine-tuned model is shown against its base model on every evaluation set of its run,
and refused when it lost more than :data:`GATE_MAX_LOSS` nDCG@10 on an out-of-domain set, unless forced.

A train job with evaluation sets writes :data:`~e5studio.jobspec.layout.EVALUATION_FILE` into each model
folder it exports (``final/``, ``best/``): the base model's and this model's metrics on every set, and each
set's role (the first ``--eval-dir`` is the in-domain set, the others out-of-domain). Every way of creating
an endpoint (admin API / ``e5studio endpoints create``, the web UI's form and its *Deploy as endpoint*) calls
:func:`check` and records the verdict it returns with the endpoint.

Models that are not local folders with that file (hub ids, aliases, models trained without evaluation sets)
are not gated: :func:`check` returns an empty record for them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from e5studio.errors import ConflictError, InputError
from e5studio.jobspec.layout import EVALUATION_FILE

GATE_MAX_LOSS = 0.01  # nDCG@10 a deployed model may lose against its base model on an out-of-domain set
GATE_METRIC = "ndcg@10"
IN_DOMAIN = "in-domain"
OUT_OF_DOMAIN = "out-of-domain"
_FORMAT = 1
_MAX_RECORD_BYTES = 1 << 20  # far above a real record (a few metrics per evaluation set)


@dataclass(frozen=True)
class SetResult:
    """One evaluation set: the base model's and this model's metrics on it."""

    name: str
    role: str  # IN_DOMAIN or OUT_OF_DOMAIN
    path: str
    base: dict[str, float]
    model: dict[str, float]

    def delta(self, metric: str = GATE_METRIC) -> float:
        return self.model[metric] - self.base[metric]

    @property
    def fails(self) -> bool:
        """An out-of-domain set that lost more than the gate allows (a loss of exactly 0.01 passes)."""
        return self.role == OUT_OF_DOMAIN and -self.delta() > GATE_MAX_LOSS + 1e-9


@dataclass(frozen=True)
class ModelEvaluation:
    """What a train job measured of one exported model (``label``: which one, e.g. "final, a = 0.6")."""

    base_model: str
    label: str
    sets: tuple[SetResult, ...]
    details: dict[str, Any] = field(default_factory=dict)  # the interpolation weight, the epoch, ...

    def to_json(self) -> dict[str, Any]:
        return {"format": _FORMAT, "base_model": self.base_model, "label": self.label,
                "sets": [asdict(s) for s in self.sets], "details": self.details}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> ModelEvaluation:
        try:
            sets = tuple(SetResult(str(s["name"]), str(s["role"]), str(s["path"]),
                                   {k: float(v) for k, v in s["base"].items()},
                                   {k: float(v) for k, v in s["model"].items()}) for s in obj["sets"])
            for s in sets:
                if s.role not in (IN_DOMAIN, OUT_OF_DOMAIN) or GATE_METRIC not in s.base or GATE_METRIC not in s.model:
                    raise ValueError(f"set {s.name!r}: role or {GATE_METRIC} missing")
            return cls(str(obj["base_model"]), str(obj.get("label", "")), sets, dict(obj.get("details") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{where}: not a valid e5studio evaluation record ({exc}); re-export the model "
                             "with `e5studio train`, or remove the file to deploy it ungated") from None


def write_evaluation(directory: Path, evaluation: ModelEvaluation) -> Path:
    """Write the record into an exported model folder (atomically)."""
    path = directory / EVALUATION_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(evaluation.to_json(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_evaluation(model: str) -> ModelEvaluation | None:
    """The record of a local model folder; None for anything else (hub id, alias, folder without one)."""
    try:
        path = Path(model).expanduser() / EVALUATION_FILE
        if not path.is_file():
            return None
        with path.open("rb") as f:
            data = f.read(_MAX_RECORD_BYTES + 1)
    except (OSError, ValueError):  # a name that is no usable path (too long, NUL): not a gated folder
        return None
    if len(data) > _MAX_RECORD_BYTES:
        raise InputError(f"{path}: larger than {_MAX_RECORD_BYTES} bytes: not an e5studio evaluation record")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{path}: malformed JSON ({exc})") from None
    return ModelEvaluation.from_json(obj, str(path))


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one model: the table, whether it passed, whether the deployer forced it."""

    evaluation: ModelEvaluation
    failures: tuple[str, ...]  # one line per out-of-domain set that lost too much
    forced: bool

    @property
    def passed(self) -> bool:
        return not self.failures

    def table(self) -> str:
        """nDCG@10 of the base model and this one on every set, with the change."""
        lines = [f"{'set':16} {'role':14} {'base':>8} {'model':>8} {'change':>8}"]
        for s in self.evaluation.sets:
            mark = "  <- loses more than the gate allows" if s.fails else ""
            lines.append(f"{s.name[:16]:16} {s.role:14} {s.base[GATE_METRIC]:8.4f} {s.model[GATE_METRIC]:8.4f} "
                         f"{s.delta():+8.4f}{mark}")
        return "\n".join(lines)

    def record(self) -> str:
        """JSON kept with the endpoint: the sets, the verdict and the choice."""
        return json.dumps({"gate_max_loss": GATE_MAX_LOSS, "metric": GATE_METRIC, "passed": self.passed,
                           "forced": self.forced, "failures": list(self.failures), **self.evaluation.to_json()})


def judge(model: str, force: bool = False) -> Verdict | None:
    """The verdict for ``model`` (None: not gated)."""
    evaluation = read_evaluation(model)
    if evaluation is None:
        return None
    failures = tuple(
        f"{s.name}: nDCG@10 {s.base[GATE_METRIC]:.4f} -> {s.model[GATE_METRIC]:.4f} ({s.delta():+.4f})"
        for s in evaluation.sets if s.fails)
    return Verdict(evaluation, failures, force and bool(failures))


def check(model: str, force: bool = False, how_to_force: str = "pass --force") -> str:
    """The record to keep with a new endpoint serving ``model`` ("" when it is not gated); raises
    :class:`~e5studio.errors.ConflictError` with the whole table when the model fails the gate and ``force``
    is not given."""
    verdict = judge(model, force)
    if verdict is None:
        return ""
    if not verdict.passed and not force:
        raise ConflictError(
            f"deploy gate: {model} lost more than {GATE_MAX_LOSS} nDCG@10 against its base model "
            f"({verdict.evaluation.base_model}) on {len(verdict.failures)} out-of-domain evaluation set(s): "
            f"{'; '.join(verdict.failures)}. Deploy it anyway only if that loss is acceptable ({how_to_force}); "
            f"the choice is recorded with the endpoint.\n{verdict.table()}")
    return verdict.record()


def summary(record: str) -> dict[str, Any] | None:
    """The endpoint's recorded gate as a dict (None when it was not gated; a damaged record says so)."""
    if not record:
        return None
    try:
        obj = json.loads(record)
    except ValueError:
        return {"passed": False, "forced": False, "failures": ["the recorded gate verdict is not valid JSON"],
                "sets": []}
    return obj if isinstance(obj, dict) else None
