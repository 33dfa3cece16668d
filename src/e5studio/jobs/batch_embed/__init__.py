"""Batch embedding of a corpus (JSONL, Parquet or plain text) into Parquet vector shards, resumably.

- ``reader``: streams the input in fixed windows of input lines/rows; bad records become rejects with
  their line numbers.
- ``writer``: atomic Parquet shards (``id``, ``text_sha256``, fixed-size float32 ``embedding``) and the
  manifest that lists them.
- ``runner``: the resumable job on one machine (``--engine local``); ``ray_engine``: the same job on
  Ray Data (``--engine ray``).
- ``sinks``: the exact search index next to the shards and PostgreSQL/pgvector.
- ``evaluation``: retrieval evaluation of a model on a test collection (``e5studio eval``).
- ``commands``: the CLI (``embed-corpus``, ``search``, ``eval``); only argparse at import time.
"""
