"""The one retrieval evaluation pipeline: a test collection -> embed (engine) -> exact search -> IR metrics.

Used by ``e5studio eval`` (:func:`run_eval`, a JSON report) and by the fine-tuning job before training and
after each epoch (:func:`evaluate_embedder`, on an :class:`~e5studio.engine.embedder.Embedder` over the
module being trained). Both score the same :data:`DEFAULT_METRICS` over the top :data:`DEFAULT_DEPTH`.

The collection layout is that of ``shared/data/<name>/``: ``passages.jsonl`` (0-based line = doc id,
``{"contents"}``), ``queries.<split>.jsonl`` (``{"qid", "query"}``) and ``qrels.<split>.tsv``
(``qid<TAB>doc_line<TAB>grade``). Queries get the ``query: `` prefix and passages ``passage: `` (never
twice), as the E5 recipe asks; an empty prefix leaves texts as they are (as MTEB runs non-E5 models).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e5studio.engine.embedder import Embedder
from e5studio.errors import InputError
from e5studio.jobspec.dataset_format import contained
from e5studio.jobspec.layout import PASSAGES_FILE, qrels_file, queries_file
from e5studio.retrieval.metrics import evaluate as evaluate_run
from e5studio.retrieval.search import exact_search, to_run
from e5studio.vocabulary import PASSAGE_PREFIX, QUERY_PREFIX

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "map")
DEFAULT_DEPTH = 1000  # ranked documents per query (MAP is computed over them)


@dataclass(frozen=True)
class EvalSet:
    """A test collection held in memory (test corpora are small next to training corpora)."""

    directory: Path
    passages: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]  # qid -> {doc id (line number as a string): grade}
    name: str = ""  # how reports call it (its folder's name)

    @property
    def doc_ids(self) -> list[str]:
        return [str(i) for i in range(len(self.passages))]


def load_eval_set(directory: Path, split: str = "test", max_queries: int | None = None) -> EvalSet:
    """Read a collection; keeps the judged queries (the first ``max_queries`` of them, in file order)."""
    names = {"passages": PASSAGES_FILE, "queries": queries_file(split), "qrels": qrels_file(split)}
    paths = {role: directory / name for role, name in names.items()}
    for role, path in paths.items():
        if not path.is_file():
            raise InputError(f"evaluation set {directory}: {path.name} not found "
                             "(expected passages.jsonl, queries.<split>.jsonl and qrels.<split>.tsv)")
        paths[role] = contained(path)  # no link out of the folder: a path names only the set's own files
    passages = [_field(path_line, "contents") for path_line in _jsonl(paths["passages"])]
    qrels: dict[str, dict[str, int]] = {}
    qrels_path = paths["qrels"]
    with qrels_path.open(encoding="utf-8", errors="replace") as f:  # bad bytes fail the field check
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 3 or not parts[1].isdigit() or not parts[2].lstrip("-").isdigit():
                raise InputError(f"{qrels_path}:{number}: expected qid<TAB>doc_line<TAB>grade (three fields, the "
                                 f"last two whole numbers), got {len(parts)} field(s)")
            if int(parts[1]) >= len(passages):
                raise InputError(f"{qrels_path}:{number}: doc line {parts[1]} is out of range "
                                 f"({len(passages)} passages)")
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    query_ids: list[str] = []
    queries: list[str] = []
    for item in _jsonl(paths["queries"]):
        qid = str(_field(item, "qid"))
        if any(g > 0 for g in qrels.get(qid, {}).values()):
            query_ids.append(qid)
            queries.append(_field(item, "query"))
    if max_queries is not None:
        query_ids, queries = query_ids[:max_queries], queries[:max_queries]
    if not query_ids:
        raise InputError(f"evaluation set {directory}: no query has a relevant document in {qrels_path.name}")
    kept = set(query_ids)
    return EvalSet(directory, passages, query_ids, queries, {q: j for q, j in qrels.items() if q in kept},
                   name=directory.resolve().name or str(directory))


def _jsonl(path: Path) -> Iterator[tuple[Path, int, object]]:
    """(path, 1-based line number, value) of every non-empty line; messages locate a problem, never quote it."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}:{number}: not valid UTF-8 (byte {exc.start + 1} of the line)") from None
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: malformed JSON at column {exc.colno}: {exc.msg}") from None
            yield path, number, value


def _field(item: tuple[Path, int, object], key: str) -> str:
    path, number, obj = item
    if not isinstance(obj, dict) or not isinstance(obj.get(key), str | int) or isinstance(obj.get(key), bool):
        raise InputError(f"{path}:{number}: expected a string field {key!r}")
    return obj[key]


def with_prefix(text: str, prefix: str) -> str:
    """``text`` starting with ``prefix`` (added unless already there; an empty prefix changes nothing)."""
    return text if not prefix or text.startswith(prefix) else prefix + text


@dataclass(frozen=True)
class Scores:
    """What one evaluation measured: the mean of each metric, and where the time went."""

    metrics: dict[str, float]
    seconds: dict[str, float]


PhaseProgress = Callable[[str, int, int], None]  # (phase, done, total): "passages", "queries", "scoring"


def _embed(embedder: Embedder, texts: list[str], phase: str, progress: PhaseProgress | None,
           chunk: int = 1024) -> np.ndarray:
    """float32 [n, d] of ``texts``, tokenised and embedded ``chunk`` at a time, ``progress`` after each
    micro-batch."""
    out = np.empty((len(texts), embedder.dim), dtype=np.float32)
    if progress is not None:
        progress(phase, 0, len(texts))
    for start in range(0, len(texts), chunk):
        part = texts[start:start + chunk]

        def done(rows: int, start: int = start) -> None:
            if progress is not None:
                progress(phase, start + rows, len(texts))

        out[start:start + len(part)] = embedder.embed_ids(embedder.tokenize(part), done)
    return out


def score(embedder: Embedder, evalset: EvalSet, metrics: Sequence[str] = DEFAULT_METRICS,
          depth: int = DEFAULT_DEPTH, query_prefix: str = QUERY_PREFIX,
          passage_prefix: str = PASSAGE_PREFIX, progress: PhaseProgress | None = None,
          corpus: np.ndarray | None = None) -> Scores:
    """Embed the corpus (unless ``corpus`` [n, d] holds its vectors already, in passage order) and the
    queries, search the top ``depth`` exactly, score every metric."""
    t0 = time.perf_counter()
    if corpus is None:
        corpus = _embed(embedder, [with_prefix(p, passage_prefix) for p in evalset.passages], "passages", progress)
    elif corpus.shape != (len(evalset.passages), embedder.dim):
        raise InputError(f"the corpus vectors have shape {tuple(corpus.shape)}, the evaluation set has "
                         f"{len(evalset.passages)} passages and the model {embedder.dim} dimensions")
    t1 = time.perf_counter()
    queries = _embed(embedder, [with_prefix(q, query_prefix) for q in evalset.queries], "queries", progress)
    t2 = time.perf_counter()
    if progress is not None:
        progress("scoring", 0, len(evalset.queries))
    scores, indices = exact_search(queries, corpus, depth)  # [q, depth]
    run = to_run(evalset.query_ids, evalset.doc_ids, scores, indices)
    means = evaluate_run(evalset.qrels, run, metrics)
    if progress is not None:
        progress("scoring", len(evalset.queries), len(evalset.queries))
    t3 = time.perf_counter()
    return Scores(means, {"passages": round(t1 - t0, 2), "queries": round(t2 - t1, 2),
                          "search_and_score": round(t3 - t2, 2)})


def evaluate_embedder(embedder: Embedder, evalset: EvalSet, metrics: Sequence[str] = DEFAULT_METRICS,
                      progress: PhaseProgress | None = None, corpus: np.ndarray | None = None) -> dict[str, float]:
    """Mean of each metric (``ndcg@10``, ``mrr@10``, ``recall@100``, ``map`` ...) over the judged queries,
    with the E5 prefixes."""
    return score(embedder, evalset, metrics, progress=progress, corpus=corpus).metrics


@dataclass(frozen=True)
class EvalSettings:
    data: Path
    split: str = "test"
    query_prefix: str = QUERY_PREFIX
    passage_prefix: str = PASSAGE_PREFIX
    metrics: tuple[str, ...] = DEFAULT_METRICS
    depth: int = DEFAULT_DEPTH
    max_queries: int | None = None


def run_eval(embedder: Embedder, settings: EvalSettings, model: dict[str, Any] | None = None,
             progress: PhaseProgress | None = None,
             corpus: Callable[[EvalSet], np.ndarray] | None = None,
             evalset: EvalSet | None = None) -> dict[str, Any]:
    """``e5studio eval``: load, embed, search and score; returns the report (metrics, counts, settings, timings).

    ``corpus``: gives the passages' vectors (read from an index) instead of embedding them. ``evalset``: the set
    already read from ``settings.data`` (a caller checks its input before it loads a model)."""
    if evalset is None:
        evalset = load_eval_set(settings.data, settings.split, settings.max_queries)
    result = score(embedder, evalset, settings.metrics, settings.depth, settings.query_prefix,
                   settings.passage_prefix, progress, corpus(evalset) if corpus is not None else None)
    return {
        "model": model or {"name": embedder.checkpoint.name, "path": str(embedder.checkpoint.path)},
        "data": str(settings.data), "split": settings.split,
        "passages": len(evalset.passages), "queries": len(evalset.query_ids),
        "query_prefix": settings.query_prefix, "passage_prefix": settings.passage_prefix,
        "max_length": embedder.max_length, "depth": settings.depth,
        "metrics": {k: round(v, 5) for k, v in result.metrics.items()},
        "seconds": result.seconds,
    }
