"""Small generated datasets and checkpoints for the fine-tuning tests (fast on a tiny model on CPU)."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

from e5studio.engine.synthetic import SHAPES, write_random_checkpoint

WORDS = ["protein", "cell", "gene", "virus", "heart", "brain", "blood", "tumor", "drug", "dose", "sleep", "bone",
         "liver", "lung", "kidney", "muscle", "enzyme", "insulin", "plasma", "neuron", "receptor", "vaccine",
         "infection", "therapy", "mutation", "signal", "membrane", "hormone", "immune"]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def toy_dataset(directory: Path, n_queries: int = 24, negatives: int = 5, seed: int = 0,
                passage_words: int = 12) -> Path:
    """passages.jsonl + train.jsonl + a test split (queries.test.jsonl, qrels.test.tsv) in ``directory``.

    Passage i is about two topic words; query i asks about them; its positive is passage i (some queries
    have two positives) and its negatives are other passages.
    """
    rng = random.Random(seed)
    n_passages = n_queries + 8
    passages = []
    for i in range(n_passages):
        topic = [WORDS[i % len(WORDS)], WORDS[(3 * i + 1) % len(WORDS)]]
        filler = [rng.choice(WORDS) for _ in range(passage_words - 2)]
        passages.append({"contents": f"{topic[0]} {topic[1]} " + " ".join(filler) + f" item {i}"})
    train = []
    for i in range(n_queries):
        positives = [str(i)] + ([str(n_queries + i % 8)] if i % 5 == 0 else [])
        pool = [j for j in range(n_passages) if str(j) not in positives]
        train.append({"query": f"what about {WORDS[i % len(WORDS)]} and {WORDS[(3 * i + 1) % len(WORDS)]} {i}",
                      "positives": {"doc_id": positives},
                      "negatives": {"doc_id": [str(j) for j in rng.sample(pool, negatives)]}})
    write_jsonl(directory / "passages.jsonl", passages)
    write_jsonl(directory / "train.jsonl", train)
    write_jsonl(directory / "queries.test.jsonl", [{"qid": f"q{i}", "query": f"{WORDS[i % len(WORDS)]} {i}"}
                                                   for i in range(0, n_queries, 3)])
    (directory / "qrels.test.tsv").write_text("".join(f"q{i}\t{i}\t1\n" for i in range(0, n_queries, 3)))
    return directory


def tiny_checkpoint(directory: Path, dropout: float = 0.1, seed: int = 0) -> Path:
    """The 'tiny' random BERT (d=32, 2 layers) with the given dropout, max length 64."""
    config = replace(SHAPES["tiny"], hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return write_random_checkpoint(directory, config, seed=seed, max_length=64)
