"""Retrieval evaluation of an embedding model on a test collection (corpus + queries + graded qrels).

The layout is that of ``shared/data/<name>/``: ``passages.jsonl`` (0-based line = doc id),
``queries.<split>.jsonl`` (``{"qid", "query"}``) and ``qrels.<split>.tsv`` (``qid<TAB>doc_line<TAB>grade``).
Queries get the ``query: `` prefix and passages ``passage: `` (never twice), as the E5 recipe asks.
The same functions evaluate a saved model (through :class:`Embedder`) and the model being trained
(through :class:`ModuleBackend`, which wraps the training module without changing its dtype or device).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from e5studio.engine.checkpoint import Checkpoint
from e5studio.engine.embedder import Embedder
from e5studio.engine.encoder import BertEncoder
from e5studio.engine.runtimes import RuntimePlan, TorchRuntime
from e5studio.engine.tokenizer import Tokenizer
from e5studio.errors import InputError
from e5studio.retrieval.metrics import evaluate as evaluate_run
from e5studio.retrieval.search import exact_search, to_run

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100")


@dataclass(frozen=True)
class EvalSet:
    """A test collection held in memory (test corpora are small next to training corpora)."""

    directory: Path
    passages: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]  # qid -> {doc id (line number as a string): grade}

    @property
    def doc_ids(self) -> list[str]:
        return [str(i) for i in range(len(self.passages))]


def load_eval_set(directory: Path, split: str = "test", max_queries: int | None = None) -> EvalSet:
    """Read a collection; keeps the judged queries (the first ``max_queries`` of them, in file order)."""
    paths = {name: directory / name for name in ("passages.jsonl", f"queries.{split}.jsonl", f"qrels.{split}.tsv")}
    for path in paths.values():
        if not path.is_file():
            raise InputError(f"evaluation set {directory}: {path.name} not found "
                             "(expected passages.jsonl, queries.<split>.jsonl and qrels.<split>.tsv)")
    passages = [_field(path_line, "contents") for path_line in _jsonl(paths["passages.jsonl"])]
    qrels: dict[str, dict[str, int]] = {}
    qrels_path = paths[f"qrels.{split}.tsv"]
    with qrels_path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 3 or not parts[1].isdigit() or not parts[2].lstrip("-").isdigit():
                raise InputError(f"{qrels_path}:{number}: expected qid<TAB>doc_line<TAB>grade, got {line.strip()!r}")
            if int(parts[1]) >= len(passages):
                raise InputError(f"{qrels_path}:{number}: doc line {parts[1]} is out of range "
                                 f"({len(passages)} passages)")
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    query_ids: list[str] = []
    queries: list[str] = []
    for item in _jsonl(paths[f"queries.{split}.jsonl"]):
        qid = str(_field(item, "qid"))
        if any(g > 0 for g in qrels.get(qid, {}).values()):
            query_ids.append(qid)
            queries.append(_field(item, "query"))
    if max_queries is not None:
        query_ids, queries = query_ids[:max_queries], queries[:max_queries]
    if not query_ids:
        raise InputError(f"evaluation set {directory}: no query has a relevant document in {qrels_path.name}")
    kept = set(query_ids)
    return EvalSet(directory, passages, query_ids, queries, {q: j for q, j in qrels.items() if q in kept})


def _jsonl(path: Path) -> Iterator[tuple[Path, int, object]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield path, number, json.loads(line)
                except ValueError as exc:
                    raise InputError(f"{path}:{number}: malformed JSON: {exc}") from None


def _field(item: tuple[Path, int, object], key: str) -> str:
    path, number, obj = item
    if not isinstance(obj, dict) or not isinstance(obj.get(key), str | int) or isinstance(obj.get(key), bool):
        raise InputError(f"{path}:{number}: expected a string field {key!r}")
    return obj[key]


def search_run(embedder: Embedder, evalset: EvalSet, k: int = 100) -> dict[str, dict[str, float]]:
    """Exact top-``k`` retrieval of every query: qid -> {doc id: score}."""
    corpus = embedder.embed(evalset.passages, input_type="passage")  # [n, d]
    queries = embedder.embed(evalset.queries, input_type="query")  # [q, d]
    scores, indices = exact_search(queries, corpus, k)
    return to_run(evalset.query_ids, evalset.doc_ids, scores, indices)


def evaluate_embedder(embedder: Embedder, evalset: EvalSet, metrics: Sequence[str] = DEFAULT_METRICS
                      ) -> dict[str, float]:
    """Mean of each metric (``ndcg@10``, ``mrr@10``, ``recall@100``, ``map`` ...) over the judged queries."""
    depth = max([int(m.split("@")[1]) for m in metrics if "@" in m] + [100])
    return evaluate_run(evalset.qrels, search_run(embedder, evalset, depth), metrics)


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Dropout off inside the block; the previous mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def evaluate_module(encoder: BertEncoder, checkpoint: Checkpoint, max_length: int, evalset: EvalSet,
                    device: torch.device, autocast_dtype: torch.dtype | None = None,
                    max_batch_tokens: int = 8192, metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Evaluate the encoder being trained, exactly as the exported model would be served."""
    embedder = Embedder(checkpoint, Tokenizer(checkpoint.path, max_length), encoder,
                        RuntimePlan(TorchRuntime(encoder, autocast_dtype)), max_batch_tokens)
    with eval_mode(encoder):
        return evaluate_embedder(embedder, evalset, metrics)
