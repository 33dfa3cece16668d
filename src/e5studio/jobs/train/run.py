"""``e5studio train`` once parsed: the spec (:class:`TrainSpec`), then the run under the job's lifecycle handle
(:mod:`e5studio.jobs.lifecycle`).

:func:`run_train` reads top to bottom: take the job the server recorded (``--job-id``), build the trainer (the
distributed process group around it: :func:`_process_group`), record a command's own job once the run can
start, train, record the result (:func:`summary`). Records go through the handle only; a Ctrl-C or SIGTERM
ends the job Interrupted with what ``--resume`` will do (:func:`stop_message`), an error Failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e5studio.control.job_records import KIND_TRAIN
from e5studio.errors import InputError, Terminated
from e5studio.jobs.lifecycle import Expected, JobHandle, stop_how
from e5studio.jobs.train.settings import RunOptions, TrainSettings

if TYPE_CHECKING:
    from e5studio.control.datasets import Dataset
    from e5studio.control.store import Store
    from e5studio.jobs.train.trainer import DistContext, Trainer, TrainResult

_STARTED: dict[str, str] = {}  # the job id this process runs, once under way (read by the stop watcher)


@dataclass(frozen=True)
class TrainSpec:
    """One ``e5studio train``: what to train from what, into which folder, how; where its record lives."""

    model: str
    dataset: str  # name (newest version), name@version, or id
    output: Path
    settings: TrainSettings
    options: RunOptions
    eval_dirs: tuple[str, ...] = ()  # the first in-domain, the others out-of-domain
    eval_max_queries: int | None = None
    eval_index: str | None = None
    resume: bool = False
    job_id: str | None = None  # the job the server recorded for this process
    data_dir: str = ".e5studio"
    store: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainSpec:
        options = RunOptions(device=args.device, gradient_checkpointing=args.gradient_checkpointing,
                             save_every=args.save_every, keep_checkpoints=args.keep_checkpoints,
                             eval_max_length=args.eval_max_length, progress=not args.no_progress,
                             interpolate=args.interpolate, max_ood_loss=args.max_ood_loss)
        return cls(model=args.model, dataset=args.dataset, output=Path(args.output).resolve(),
                   settings=TrainSettings.from_args(args), options=options, eval_dirs=tuple(args.eval_dir or ()),
                   eval_max_queries=args.eval_max_queries, eval_index=args.eval_index, resume=args.resume,
                   job_id=args.job_id, data_dir=args.data_dir, store=args.store)

    def expected(self, dataset: Dataset) -> Expected:
        return Expected(kind=KIND_TRAIN, output=str(self.output), dataset_id=dataset.id, model=self.model)

    def open_store(self) -> Store:
        from e5studio.control.database import store_target
        from e5studio.control.store import Store

        return Store(store_target(self.store, self.data_dir))


class StoreReporter:
    """The trainer's reporter (on the main rank): the step and loss (at most every 2 s) and each evaluation,
    recorded through the job's handle."""

    def __init__(self, handle: JobHandle) -> None:
        self.handle = handle

    def on_start(self, total_steps: int, start_step: int) -> None:
        self.handle.progress(start_step, total_steps, force=True)

    def on_step(self, step: int, total_steps: int, loss: float) -> None:
        self.handle.progress(step, total_steps, {"loss": loss})

    def on_eval(self, step: int, epoch: int, metrics: Mapping[str, Any]) -> None:
        shown = {k: v for k, v in metrics.items() if k not in ("event", "step", "epoch", "seconds")}
        self.handle.progress(step, metrics={f"epoch{epoch}": shown, "last_eval": {"epoch": epoch, **shown}},
                             force=True)


def stop_message(output: Path, how: str) -> str:
    """What an interrupted train run says: whether a checkpoint exists and what ``--resume`` will do."""
    from e5studio.jobs.train.checkpoints import latest_checkpoint
    from e5studio.jobspec.layout import CHECKPOINTS_DIR

    latest = latest_checkpoint(output / CHECKPOINTS_DIR)
    if latest is None:
        return (f"interrupted ({how}); no checkpoint yet (one is written at each epoch end and every --save-every "
                "steps): `e5studio train ... --resume` starts again from step 0")
    return (f"interrupted ({how}); newest checkpoint {latest.name}: `e5studio train ... --resume` continues from "
            "there")


def record_stuck(spec: TrainSpec, how: str) -> None:
    """The stop watcher's record (the main thread is inside a long native call): the job under way, if any,
    Interrupted, on a connection of its own."""
    message = stop_message(spec.output, how)
    job_id = _STARTED.get("job_id")
    if job_id is not None:
        with spec.open_store() as store:
            JobHandle(store, job_id).interrupt(message)
    print(f"e5studio: {message}", file=sys.stderr, flush=True)


def load_eval_sets(directories: Sequence[str], max_queries: int | None) -> tuple[Any, ...]:
    """The ``--eval-dir`` sets in order, each named by its folder (``name-2`` ... when two folders share a name)."""
    from e5studio.retrieval.evaluate import load_eval_set

    out = []
    seen: set[str] = set()
    for directory in directories:
        evalset = load_eval_set(Path(directory), max_queries=max_queries)
        name, n = evalset.name, 2
        while name in seen:
            name, n = f"{evalset.name}-{n}", n + 1
        seen.add(name)
        out.append(dataclasses.replace(evalset, name=name))
    return tuple(out)


def run_train(spec: TrainSpec) -> int:
    """Run ``spec`` under its job's handle; the exit status of ``e5studio train``."""
    from e5studio.jobs.train.trainer import DistContext

    dist = DistContext.from_env(os.environ)
    with spec.open_store() as store:
        handle = JobHandle.unrecorded()
        try:
            dataset = store.get_dataset(spec.dataset)
            if dist.is_main and spec.job_id is not None:
                taken = JobHandle.take(store, spec.job_id, spec.expected(dataset), spec.resume)
                if taken is None:
                    print(f"e5studio: job {spec.job_id} was cancelled before it started; nothing to do",
                          file=sys.stderr)
                    return 0
                handle = taken
            with handle.running(lambda how: stop_message(spec.output, how)), \
                    _process_group(dist, spec.options.device):
                trainer = _build_trainer(spec, store, dataset, dist)
                if dist.is_main:
                    _under_way(spec, store, handle, trainer, dataset)
                result = trainer.run(resume=spec.resume)
                if dist.is_main and handle.job_id is not None:
                    done = summary(result)
                    handle.finish(result.steps, done)
                    print(json.dumps({"job": handle.job_id, **done}, indent=2))
        except (KeyboardInterrupt, Terminated) as exc:
            how = stop_how(exc)
            print(f"e5studio: {stop_message(spec.output, how)}", file=sys.stderr)
            return 130 if how == "Ctrl-C" else 128 + signal.SIGTERM
    return 0


def _build_trainer(spec: TrainSpec, store: Store, dataset: Dataset, dist: DistContext) -> Trainer:
    """The trainer of ``spec``: dataset checked unchanged, evaluation sets (and ``--eval-index`` vectors) loaded."""
    from e5studio.jobs.train.commands import check_unchanged
    from e5studio.jobs.train.trainer import Trainer, TrainRun

    if dist.is_main:
        check_unchanged(dataset)
    if dist.is_main and spec.options.progress:
        print(f"train: loading {spec.model} and dataset {dataset.ref}", file=sys.stderr, flush=True)
    evalsets = load_eval_sets(spec.eval_dirs, spec.eval_max_queries)
    eval_corpus = None
    if spec.eval_index:
        if not evalsets:
            raise InputError("--eval-index needs --eval-dir (the evaluation set whose passages it holds: the "
                             "first --eval-dir)")
        eval_corpus = _eval_index_vectors(spec, evalsets[0])
    run = TrainRun(model=spec.model, dataset_dir=Path(dataset.path), output=spec.output, settings=spec.settings,
                   options=spec.options, evalsets=evalsets, eval_corpus=eval_corpus,
                   dataset_checksums={"passages": dataset.passages_sha256, "train": dataset.train_sha256})
    return Trainer(run, dist)


def _eval_index_vectors(spec: TrainSpec, evalset: Any) -> Any:
    """``--eval-index``: the base model's passage vectors of the evaluation set, for the evaluation before
    training (refused unless the index was made by that model, in fp32, with the passage prefix)."""
    from e5studio.engine.model_identity import model_identity
    from e5studio.jobs.corpus_index import index_corpus
    from e5studio.settings import EngineSettings
    from e5studio.vocabulary import PASSAGE_PREFIX

    assert spec.eval_index is not None
    identity = model_identity(EngineSettings(model=spec.model, max_length=spec.options.eval_max_length))
    return index_corpus(Path(spec.eval_index), identity, "fp32", PASSAGE_PREFIX)(evalset)


def _under_way(spec: TrainSpec, store: Store, handle: JobHandle, trainer: Trainer, dataset: Dataset) -> None:
    """The main rank's job is under way: recorded (a command's own job is recorded only now, when the run can
    start), reported to, and named on stderr."""
    if handle.job_id is None:
        params = {"dataset": dataset.ref, "eval_dirs": [str(e.directory) for e in trainer.job.evalsets],
                  "world_size": trainer.dist.world_size, "interpolate": spec.options.interpolate,
                  "max_ood_loss": spec.options.max_ood_loss, **vars(spec.settings)}
        handle.record(store, spec.expected(dataset), params, spec.resume)
    trainer.reporter = StoreReporter(handle)
    assert handle.job_id is not None
    _STARTED["job_id"] = handle.job_id
    print(f"train job {handle.job_id}: {spec.model} on dataset {dataset.ref} -> {spec.output} "
          f"({trainer.total_steps} steps, {trainer.dist.world_size} process(es), device {trainer.device})",
          file=sys.stderr, flush=True)


@contextmanager
def _process_group(dist: DistContext, device: str) -> Iterator[None]:
    """Under ``torchrun`` (several processes) the distributed process group, torn down however the run ends."""
    import torch
    import torch.distributed as torch_dist

    if dist.world_size > 1:
        torch_dist.init_process_group("nccl" if device != "cpu" and torch.cuda.is_available() else "gloo")
    try:
        yield
    finally:
        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def summary(result: TrainResult) -> dict[str, Any]:
    """What a finished run records and prints: where its models are, its speed, its metrics before and after."""
    out: dict[str, Any] = {"final_dir": str(result.final_dir), "groups_per_s": round(result.groups_per_s, 3),
                           "best_dir": str(result.best_dir) if result.best_dir else None}
    if result.peak_memory_bytes is not None:
        out["peak_gpu_memory_gib"] = round(result.peak_memory_bytes / 2**30, 2)
    if result.history:
        last = result.final or result.history[-1]
        out["before"] = {k: v for k, v in result.history[0].items() if "@" in k}
        out["after"] = {k: v for k, v in last.items() if "@" in k}
        if "sets" in last:
            out["sets"] = {name: {"before": result.history[0]["sets"][name]["ndcg@10"], "after": m["ndcg@10"]}
                           for name, m in last["sets"].items()}
        if result.final is not None:
            out["interpolation"] = result.final.get("alpha", 1.0)
    return out
