"""The passage vectors an ``embed-corpus`` run wrote, reused by an evaluation (``eval --index``, and the
fine-tuning job's evaluation before training, whose model is the one the vectors were made with): only the
queries are embedded. Refused, with the difference named, unless model checksum, precision, passage prefix and
truncation match and the vectors cover every passage of the evaluation set by line number."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from e5studio.errors import InputError
from e5studio.jobspec.layout import INDEX_DIR, MANIFEST_FILE, PASSAGES_FILE
from e5studio.retrieval.evaluate import EvalSet
from e5studio.retrieval.index import ExactIndex
from e5studio.vocabulary import prefix_of


def index_corpus(folder: Path, model: dict[str, Any], precision: str, passage_prefix: str
                 ) -> Callable[[EvalSet], np.ndarray]:
    """The passage vectors of an ``embed-corpus`` output, for ``eval --index``: refused (InputError naming the
    difference) unless they were made by the same model (checksum), precision and passage prefix, and hold
    every passage of the evaluation set in line order."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict):
        raise InputError(f"--index {folder}: no embed-corpus output there (manifest.json missing); make one with "
                         f"`e5studio embed-corpus DATA/{PASSAGES_FILE} --output {folder} --model MODEL`")
    if manifest.get("status") != "complete":
        raise InputError(f"--index {folder}: embed-corpus has not finished; rerun it to complete the index")
    built, settings = manifest["model"], manifest["settings"]
    differences = []
    if built.get("sha256") != model["sha256"]:
        differences.append(f"model {built.get('name')} (sha256 {str(built.get('sha256'))[:12]}) vs the eval's "
                           f"{model['name']} (sha256 {model['sha256'][:12]})")
    if settings.get("precision", "fp32") != precision:
        differences.append(f"precision {settings.get('precision', 'fp32')} vs the eval's {precision}")
    built_prefix = prefix_of(settings.get("input_type"))
    if built_prefix != passage_prefix:
        differences.append(f"passage prefix {built_prefix!r} (--input-type "
                           f"{settings.get('input_type') or 'none'}) vs the eval's {passage_prefix!r}")
    if built.get("max_length") != model["max_length"]:
        differences.append(f"max length {built.get('max_length')} vs the eval's {model['max_length']}")
    if differences:
        raise InputError(f"--index {folder} does not match this eval: " + "; ".join(differences)
                         + "; embed the corpus again with the eval's settings, or evaluate without --index")

    def vectors(evalset: EvalSet) -> np.ndarray:
        passages = evalset.directory / PASSAGES_FILE
        made_from = manifest.get("input") or {}
        if made_from.get("size") != passages.stat().st_size or made_from.get("id_field") or \
                made_from.get("format") not in ("jsonl", "auto"):
            raise InputError(f"--index {folder} was not made from {passages} (by line number); embed that file")
        index = ExactIndex.open(folder / INDEX_DIR)
        order = {doc_id: row for row, doc_id in enumerate(index.ids)}
        missing = [d for d in evalset.doc_ids if d not in order]
        if missing:
            raise InputError(f"--index {folder} lacks {len(missing)} passage(s) of {passages} (first: line "
                             f"{missing[0]}; rejected records?)")
        rows = [order[d] for d in evalset.doc_ids]
        return np.asarray(index.vectors[rows] if rows != list(range(len(index.ids))) else index.vectors)

    return vectors
