"""The file layout of job outputs and datasets: every file and folder name, written once.

A job folder (``<data dir>/jobs/<job id>/`` for server jobs, ``--output`` for command-line ones) holds:

- train: ``metrics.jsonl`` + ``metrics.png`` (what :mod:`e5studio.jobs.train.report` writes),
  ``checkpoints/`` (resumable state), ``best/`` and ``final/`` (exported models, Hugging Face layout, each
  with ``e5studio-evaluation.json`` when the run had evaluation sets),
  ``job.log`` (server jobs: the process's output);
- batch embedding: ``vectors/`` (an ``embed-corpus`` output: ``manifest.json``, ``shards/``,
  ``rejects.jsonl``, ``index/``) and ``job.log``.

A dataset folder holds ``passages.jsonl`` + ``train.jsonl``; an evaluation set ``passages.jsonl``,
``queries.<split>.jsonl`` and ``qrels.<split>.tsv``.
"""

from __future__ import annotations

from pathlib import Path

# the data dir (``--data-dir``)
STORE_FILE = "e5studio.db"  # the control store
JOBS_DIR = "jobs"  # one folder per server job, named by its id
DATASETS_DIR = "datasets"  # mined and uploaded dataset versions

# any server job
LOG_FILE = "job.log"
PROGRESS_FILE = "progress.json"  # the live progress line of a job (train: its output; embed-corpus: its output)

# a train job
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
FINAL_DIR = "final"
MODEL_CONFIG_FILE = "config.json"  # present in an exported model folder once it is complete
# in an exported model folder: its nDCG@10 (and the other metrics) against the base model on every evaluation
# set of the run (e5studio.jobspec.deploy_gate reads it when the folder is deployed)
EVALUATION_FILE = "e5studio-evaluation.json"

# a batch-embedding job (server): the embed-corpus output inside its folder
VECTORS_DIR = "vectors"

# an embed-corpus output
MANIFEST_FILE = "manifest.json"
SHARDS_DIR = "shards"
REJECTS_FILE = "rejects.jsonl"
INDEX_DIR = "index"
LOCK_FILE = ".lock"

# datasets and evaluation sets
PASSAGES_FILE = "passages.jsonl"
TRAIN_FILE = "train.jsonl"


def queries_file(split: str) -> str:
    return f"queries.{split}.jsonl"


def qrels_file(split: str) -> str:
    return f"qrels.{split}.tsv"


def eval_files(split: str = "test") -> tuple[str, str, str]:
    """The files of an evaluation set's ``split``: passages, queries, graded judgements."""
    return PASSAGES_FILE, queries_file(split), qrels_file(split)


def store_path(data_dir: Path) -> Path:
    return Path(data_dir) / STORE_FILE
