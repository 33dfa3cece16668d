"""CLI commands for fine-tuning: ``e5studio datasets ...`` and ``e5studio train``.

Only argparse and the standard library at import time (so ``e5studio --help`` stays fast); torch, the
engine and the trainer are imported inside the commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e5studio.errors import InputError, Terminated
from e5studio.jobspec.layout import DATASETS_DIR, eval_files
from e5studio.jobspec.params import add_arguments
from e5studio.jobspec.train_params import ALL_PARAMS, HYPERPARAMETERS, RUN_PARAMS, SELECTION_PARAMS

if TYPE_CHECKING:
    from e5studio.control.store import Store

DEFAULT_DATA_DIR = ".e5studio"


def _store(args: argparse.Namespace) -> Store:
    from e5studio.control.database import store_target
    from e5studio.control.store import Store

    return Store(store_target(args.store, args.data_dir))


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help=f"where the control store (by default) and datasets live (default ./{DEFAULT_DATA_DIR})")
    parser.add_argument("--store", default=None, metavar="URL",
                        help="the control store: postgres://USER[:PASSWORD]@HOST[:PORT]/DB (servers sharing it) or a "
                             "SQLite path (default $E5STUDIO_STORE, else DATA_DIR/e5studio.db)")


def _add_validation_flags(parser: argparse.ArgumentParser) -> None:
    n = ALL_PARAMS["train_n_passages"]
    parser.add_argument(n.flag, type=int, default=n.default,
                        help=f"{n.help} (default {n.default}): queries with fewer negatives get a warning")
    parser.add_argument("--max-problems", type=int, default=100, help="stop after this many errors (default 100)")


# ---------------------------------------------------------------------------------------------- datasets


def _validate(directory: str, args: argparse.Namespace) -> Any:
    from e5studio.jobspec.dataset_format import validate_dataset

    report = validate_dataset(Path(directory), args.train_n_passages, args.max_problems)
    for line in report.lines():
        print(line)
    return report


def cmd_datasets(args: argparse.Namespace) -> int:
    if args.action == "validate":
        return 0 if _validate(args.directory, args).ok else 1
    if args.action == "add":
        report = _validate(args.directory, args)
        if not report.ok:
            raise InputError(f"dataset {args.name!r} not recorded: {len(report.errors)} errors (listed above)")
        with _store(args) as store:
            dataset = store.add_dataset(
                args.name, str(Path(args.directory).resolve()), passages=report.passages, queries=report.queries,
                positives=report.positives, negatives=report.negatives, passages_sha256=report.passages_sha256,
                train_sha256=report.train_sha256, description=args.description)
        print(f"recorded dataset {dataset.ref} (id {dataset.id})")
        return 0
    if args.action == "list":
        with _store(args) as store:
            datasets = store.list_datasets()
        if not datasets:
            print("no datasets (add one with `e5studio datasets add NAME DIR`)")
        for d in datasets:
            print(f"{d.ref:<24} {d.passages:>9} passages {d.queries:>8} queries {d.negatives:>9} negatives  "
                  f"train sha256 {d.train_sha256[:12]}  {d.path}")
        return 0
    from e5studio.jobs.train.stop import stops_promptly

    def stopped(how: str) -> None:
        print(f"e5studio: mine-negatives interrupted ({how}); no new version of {args.name} recorded (run the same "
              "command again)", file=sys.stderr, flush=True)

    with stops_promptly(stopped):
        try:
            return _mine(args)
        except KeyboardInterrupt:
            stopped("Ctrl-C")
            return 130


def _mine(args: argparse.Namespace) -> int:
    from e5studio.engine.embedder import Embedder
    from e5studio.jobs.train.mining import mine_negatives
    from e5studio.jobspec.dataset_format import validate_dataset
    from e5studio.jobspec.progress import phase_lines
    from e5studio.settings import EngineSettings

    with _store(args) as store:
        source = store.get_dataset(args.name)
        _check_unchanged(source)
        settings = EngineSettings.from_env(model=args.model, device=args.device, threads=args.threads,
                                           max_batch_tokens=args.max_batch_tokens, max_length=args.max_length)
        print(f"mine-negatives: {source.ref}: loading {args.model}", file=sys.stderr, flush=True)
        embedder = Embedder.load(settings)
        newest = store.get_dataset(source.name).version
        destination = Path(args.data_dir).resolve() / DATASETS_DIR / source.name / f"v{newest + 1}"
        t0 = time.perf_counter()
        result = mine_negatives(Path(source.path), destination, embedder, args.top_k, args.skip_top,
                                phase_lines("mine-negatives", {"passages": "embedding passages",
                                                                  "queries": "embedding queries",
                                                                  "ranking": "ranking the corpus"}))
        report = validate_dataset(destination, args.train_n_passages)
        if not report.ok:  # pragma: no cover - mining writes valid files
            raise InputError(f"mined dataset in {destination} is invalid: {report.errors[0]}")
        dataset = store.add_dataset(
            source.name, str(destination), passages=report.passages, queries=report.queries,
            positives=report.positives, negatives=report.negatives, passages_sha256=report.passages_sha256,
            train_sha256=report.train_sha256, parent_id=source.id,
            description=f"{source.ref} + {args.top_k} negatives mined with {args.model} (skip top {args.skip_top})")
    print(f"mined {result.negatives_added} negatives for {result.queries} queries in "
          f"{time.perf_counter() - t0:.1f}s; recorded dataset {dataset.ref} ({destination})")
    return 0


def _check_unchanged(dataset: Any) -> None:
    from e5studio.jobs.files import file_sha256
    from e5studio.jobspec.layout import PASSAGES_FILE, TRAIN_FILE

    for name, expected in ((PASSAGES_FILE, dataset.passages_sha256), (TRAIN_FILE, dataset.train_sha256)):
        path = Path(dataset.path) / name
        if not path.is_file():
            raise InputError(f"dataset {dataset.ref}: {path} no longer exists")
        if file_sha256(path) != expected:
            raise InputError(f"dataset {dataset.ref}: {path} changed since it was recorded; "
                             f"record it again with `e5studio datasets add {dataset.name} {dataset.path}`")


# ---------------------------------------------------------------------------------------------- train


class StoreReporter:
    """Records a train job's progress and metrics in the control store (progress at most every 2 s)."""

    def __init__(self, store: Store, job_id: str, interval_s: float = 2.0) -> None:
        self.store = store
        self.job_id = job_id
        self.interval_s = interval_s
        self._last = 0.0

    def on_start(self, total_steps: int, start_step: int) -> None:
        self.store.update_job(self.job_id, total_steps=total_steps, step=start_step)

    def on_step(self, step: int, total_steps: int, loss: float) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_s or step == total_steps:
            self._last = now
            self.store.update_job(self.job_id, step=step, metrics={"loss": loss})

    def on_eval(self, step: int, epoch: int, metrics: Mapping[str, Any]) -> None:
        shown = {k: v for k, v in metrics.items() if k not in ("event", "step", "epoch", "seconds")}
        self.store.update_job(self.job_id, step=step, metrics={f"epoch{epoch}": shown, "last_eval": {
            "epoch": epoch, **shown}})


_STARTED: dict[str, str] = {}  # the job id this process runs, once recorded (read by the stop watcher)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread (once; a second one kills)."""
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield
        return

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _claim_job(store: Store, job_id: str, output: Path, dataset: Any, model: str, resume: bool) -> bool:
    """Take over the recorded job ``job_id`` (``--job-id``): False when it was cancelled before this start.

    The job must be a train job for the same output, dataset and model; a Failed or Interrupted one
    becomes Running again. Cancelled means "do not run" (a cancel may arrive before the process starts).
    """
    from e5studio.control.job_records import (
        JOB_CANCELLED,
        JOB_FAILED,
        JOB_INTERRUPTED,
        JOB_RUNNING,
        KIND_TRAIN,
        RESTARTED_REASON,
        RESUMED_REASON,
    )

    job = store.get_job(job_id)
    mismatch = [name for name, ok in (("kind", job.kind == KIND_TRAIN), ("output", job.output == str(output)),
                                      ("dataset", job.dataset_id == dataset.id), ("model", job.model == model))
                if not ok]
    if mismatch:
        raise InputError(f"job {job_id} is not this run: its {', '.join(mismatch)} differ "
                         f"(job: kind {job.kind}, output {job.output}, model {job.model})")
    if job.status == JOB_RUNNING:
        return True
    if store.transition_job(job_id, (JOB_FAILED, JOB_INTERRUPTED), JOB_RUNNING,
                            RESUMED_REASON if resume else RESTARTED_REASON):
        return True
    status = store.get_job(job_id).status
    if status == JOB_CANCELLED:
        return False
    raise InputError(f"job {job_id} is {status}; only a Running, Failed or Interrupted job can be run again")


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


def cmd_train(args: argparse.Namespace) -> int:
    from e5studio.jobs.train.stop import stops_promptly

    def stuck(how: str) -> None:  # the watcher thread: the main thread is inside a long native call
        from e5studio.control.job_records import JOB_INTERRUPTED, JOB_RUNNING

        message = stop_message(Path(args.output).resolve(), how)
        job = _STARTED.get("job_id")
        if job is not None:
            with _store(args) as store:
                store.transition_job(job, (JOB_RUNNING,), JOB_INTERRUPTED, message)
        print(f"e5studio: {message}", file=sys.stderr, flush=True)

    with _sigterm_raises(), stops_promptly(stuck):
        try:
            return _train(args)
        except Terminated:  # before the job was under way (while torch was loading, say): nothing to record
            print("e5studio: stopped (SIGTERM) before training started", file=sys.stderr)
            return 128 + signal.SIGTERM


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


def _eval_index_vectors(args: argparse.Namespace, evalset: Any) -> Any:
    """``--eval-index``: the base model's passage vectors of the evaluation set, for the evaluation before
    training (refused unless the index was made by that model, in fp32, with the passage prefix)."""
    from e5studio.jobs.corpus_index import index_corpus
    from e5studio.jobs.model_identity import model_identity
    from e5studio.settings import EngineSettings
    from e5studio.vocabulary import PASSAGE_PREFIX

    identity = model_identity(EngineSettings(model=args.model, max_length=args.eval_max_length))
    return index_corpus(Path(args.eval_index), identity, "fp32", PASSAGE_PREFIX)(evalset)


def _train(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as torch_dist

    from e5studio.control.job_records import (
        JOB_CANCELLED,
        JOB_FAILED,
        JOB_INTERRUPTED,
        JOB_OWNER_CLI,
        JOB_RUNNING,
        JOB_STATUSES,
        JOB_SUCCEEDED,
        KIND_TRAIN,
        RESUMED_REASON,
    )
    from e5studio.jobs.train.settings import RunOptions, TrainSettings
    from e5studio.jobs.train.trainer import DistContext, Trainer, TrainRun
    dist = DistContext.from_env(os.environ)
    output = Path(args.output).resolve()
    store = _store(args)
    job_id: str | None = None
    try:
        settings = TrainSettings.from_args(args)
        options = RunOptions(device=args.device, gradient_checkpointing=args.gradient_checkpointing,
                             save_every=args.save_every, keep_checkpoints=args.keep_checkpoints,
                             eval_max_length=args.eval_max_length, progress=not args.no_progress,
                             interpolate=args.interpolate, max_ood_loss=args.max_ood_loss)
        dataset = store.get_dataset(args.dataset)
        if dist.is_main and args.job_id is not None:
            if not _claim_job(store, args.job_id, output, dataset, args.model, args.resume):
                print(f"e5studio: job {args.job_id} was cancelled before it started; nothing to do", file=sys.stderr)
                return 0
            job_id = args.job_id
        if dist.is_main:
            _check_unchanged(dataset)
        if dist.is_main and not args.no_progress:
            print(f"train: loading {args.model} and dataset {dataset.ref}", file=sys.stderr, flush=True)
        evalsets = load_eval_sets(args.eval_dir or [], args.eval_max_queries)
        if dist.world_size > 1:
            backend = "nccl" if args.device != "cpu" and torch.cuda.is_available() else "gloo"
            torch_dist.init_process_group(backend)
        eval_corpus = None
        if args.eval_index:
            if not evalsets:
                raise InputError("--eval-index needs --eval-dir (the evaluation set whose passages it holds: the "
                                 "first --eval-dir)")
            eval_corpus = _eval_index_vectors(args, evalsets[0])
        job = TrainRun(model=args.model, dataset_dir=Path(dataset.path), output=output, settings=settings,
                       options=options, evalsets=evalsets, eval_corpus=eval_corpus,
                       dataset_checksums={"passages": dataset.passages_sha256, "train": dataset.train_sha256})
        trainer = Trainer(job, dist)
        if dist.is_main:
            if job_id is None:
                params = {"dataset": dataset.ref, "eval_dirs": [str(e.directory) for e in evalsets],
                          "world_size": dist.world_size, "interpolate": options.interpolate,
                          "max_ood_loss": options.max_ood_loss, **{k: v for k, v in vars(settings).items()}}
                previous = store.latest_job_for_output(KIND_TRAIN, str(output)) if args.resume else None
                if previous is not None:
                    job_id = previous.id
                    store.transition_job(job_id, JOB_STATUSES, JOB_RUNNING, RESUMED_REASON)
                else:
                    job_id = store.create_job(KIND_TRAIN, args.model, str(output), params, dataset.id).id
                store.set_job_process(job_id, os.getpid(), owner=JOB_OWNER_CLI, runner_id="", runner_pid=0)
            trainer.reporter = StoreReporter(store, job_id)
            _STARTED["job_id"] = job_id
            print(f"train job {job_id}: {args.model} on dataset {dataset.ref} -> {output} "
                  f"({trainer.total_steps} steps, {dist.world_size} process(es), device {trainer.device})",
                  file=sys.stderr, flush=True)
        result = trainer.run(resume=args.resume)
        if dist.is_main and job_id is not None:
            summary: dict[str, Any] = {"final_dir": str(result.final_dir),
                                       "groups_per_s": round(result.groups_per_s, 3),
                                       "best_dir": str(result.best_dir) if result.best_dir else None}
            if result.peak_memory_bytes is not None:
                summary["peak_gpu_memory_gib"] = round(result.peak_memory_bytes / 2**30, 2)
            if result.history:
                last = result.final or result.history[-1]
                summary["before"] = {k: v for k, v in result.history[0].items() if "@" in k}
                summary["after"] = {k: v for k, v in last.items() if "@" in k}
                if "sets" in last:
                    summary["sets"] = {name: {"before": result.history[0]["sets"][name]["ndcg@10"],
                                              "after": m["ndcg@10"]} for name, m in last["sets"].items()}
                if result.final is not None:
                    summary["interpolation"] = result.final.get("alpha", 1.0)
            store.update_job(job_id, step=result.steps, metrics=summary)
            # done, even if a cancel came too late to stop it
            store.transition_job(job_id, (JOB_RUNNING, JOB_CANCELLED), JOB_SUCCEEDED, "")
            print(json.dumps({"job": job_id, **summary}, indent=2))
    except (KeyboardInterrupt, Terminated) as exc:
        how = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else "SIGTERM"
        message = stop_message(output, how)
        if job_id is not None:  # a Cancelled job (the server records the cancel before signalling) stays Cancelled
            store.transition_job(job_id, (JOB_RUNNING,), JOB_INTERRUPTED, message)
        print(f"e5studio: {message}", file=sys.stderr)
        return 130 if how == "Ctrl-C" else 128 + signal.SIGTERM
    except BaseException as exc:
        if job_id is not None:
            store.transition_job(job_id, (JOB_RUNNING,), JOB_FAILED, f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
        store.close()
    return 0


# ---------------------------------------------------------------------------------------------- parsers


def add_parsers(sub: Any) -> None:
    """Add ``datasets`` and ``train`` to the CLI's subparsers."""
    datasets = sub.add_parser("datasets", help="fine-tuning datasets: validate, add, list, mine-negatives",
                              description="Datasets in the passages.jsonl + train.jsonl format.")
    dsub = datasets.add_subparsers(dest="action", required=True)
    validate = dsub.add_parser("validate", help="check a dataset directory; every problem with file and line")
    validate.add_argument("directory")
    _add_validation_flags(validate)
    add = dsub.add_parser("add", help="validate a dataset directory and record it (a new version if NAME exists)")
    add.add_argument("name")
    add.add_argument("directory")
    add.add_argument("--description", default="")
    _add_validation_flags(add)
    _add_data_dir(add)
    listing = dsub.add_parser("list", help="recorded datasets, every version")
    _add_data_dir(listing)
    mine = dsub.add_parser("mine-negatives", help="add hard negatives mined with a model (a new dataset version)",
                           description="Embed the corpus and the queries, rank, skip the top few non-positives, "
                                       "keep the next K as negatives; records NAME's next version.")
    mine.add_argument("name", help="dataset name (newest version), name@version, or id")
    mine.add_argument("--model", required=True, help="hub id, alias or local directory used for mining")
    mine.add_argument("--top-k", type=int, default=30, help="negatives mined per query (default 30)")
    mine.add_argument("--skip-top", type=int, default=3,
                      help="non-positive passages skipped at the top of each ranking (likely false negatives; "
                           "default 3)")
    mine.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    mine.add_argument("--threads", type=int, default=None)
    mine.add_argument("--max-batch-tokens", type=int, default=None)
    mine.add_argument("--max-length", type=int, default=None, help="truncation length (default: the model's)")
    mine.add_argument("--train-n-passages", type=int, default=8, help=argparse.SUPPRESS)
    _add_data_dir(mine)
    datasets.set_defaults(func=cmd_datasets)

    train = sub.add_parser("train", help="fine-tune a model on a dataset (E5 recipe; torchrun for several GPUs)",
                           description="Contrastive fine-tuning with InfoNCE over the global batch. Run under "
                                       "`torchrun --nproc-per-node N` for DDP.")
    train.add_argument("--dataset", required=True, help="dataset name (newest version), name@version, or id")
    train.add_argument("--model", required=True, help="hub id, alias or local directory to start from")
    train.add_argument("--output", required=True, help="job directory: checkpoints/, best/, final/, metrics")
    train.add_argument("--eval-dir", action="append", default=None, metavar="DIR",
                       help=f"evaluation set ({', '.join(eval_files())}): nDCG@10, MRR@10, Recall@100, MAP "
                            "(the metrics of `e5studio eval`) before training and after each epoch; repeat it: the "
                            "first is the in-domain set, every other one an out-of-domain set that guards what "
                            "the base model knew (--max-ood-loss, --interpolate, the deploy gate)")
    train.add_argument("--eval-index", default=None, metavar="DIR",
                       help="the evaluation before training scores against the passage vectors `e5studio "
                            "embed-corpus EVAL_DIR/passages.jsonl --model MODEL` wrote to DIR (only the queries are "
                            "embedded; the evaluations after each epoch embed the corpus with the trained model)")
    train.add_argument("--eval-max-queries", type=int, default=None, help="evaluate on the first N judged queries")
    train.add_argument("--eval-max-length", type=int, default=None, help="truncation in evaluation (default: "
                                                                         "the model's serving length)")
    add_arguments(train, HYPERPARAMETERS.values())
    train.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    train.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    add_arguments(train, RUN_PARAMS.values())
    add_arguments(train, SELECTION_PARAMS.values())
    train.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--job-id", default=None,
                       help="run the job recorded under this id (by the server) instead of recording a new one; "
                            "with --resume, continue it")
    _add_data_dir(train)
    train.set_defaults(func=cmd_train)
