"""CLI commands for fine-tuning: ``e5studio datasets ...`` and ``e5studio train``.

Only argparse and the standard library at import time (so ``e5studio --help`` stays fast); torch, the
engine and the trainer are imported inside the commands.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Iterator
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
        check_unchanged(source)
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


def check_unchanged(dataset: Any) -> None:
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


def cmd_train(args: argparse.Namespace) -> int:
    """Parse -> spec -> run under the job's handle (:mod:`.run`)."""
    from e5studio.jobs.train.run import TrainSpec, record_stuck, run_train
    from e5studio.jobs.train.stop import stops_promptly

    spec = TrainSpec.from_args(args)
    with _sigterm_raises(), stops_promptly(lambda how: record_stuck(spec, how)):
        try:
            return run_train(spec)
        except Terminated:  # before the job was under way (while torch was loading, say): nothing to record
            print("e5studio: stopped (SIGTERM) before training started", file=sys.stderr)
            return 128 + signal.SIGTERM


_MOVED_TO_RUN = ("StoreReporter", "load_eval_sets", "stop_message")


def __getattr__(name: str) -> Any:
    """The train run's names, where callers have long found them (imported only when asked: ``--help`` stays
    light)."""
    if name in _MOVED_TO_RUN:
        from e5studio.jobs.train import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
