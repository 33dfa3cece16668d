"""Batch embedding of a corpus (JSONL, Parquet or plain text) into Parquet vector shards, resumably.

- ``reader``: streams the input in fixed windows of input lines/rows; bad records become rejects with
  their line numbers.
- ``windows``: one window tokenised, embedded (length-sorted micro-batches) and written as a shard.
- ``writer``: atomic Parquet shards (``id``, ``text_sha256``, fixed-size float32 ``embedding``) and the
  manifest file.
- ``manifest_state``: what is done, kept consistent across crashes and reruns; ``model_identity``: the
  checksum of the model that shaped the vectors.
- ``runner``: the job (under its lifecycle handle, :mod:`e5studio.jobs.lifecycle`) and its window executors:
  ``LocalExecutor`` (``--engine local``, with ``prefetch``); ``ray_executor``: the same windows on Ray Data
  (``--engine ray``); ``progress``: the job's line (rows, or MB of a large line file) and counts; ``summary``.
- ``sinks``: the exact search index next to the shards and PostgreSQL/pgvector.
- ``commands``: the CLI (``embed-corpus``, with ``--job-id`` the server's job; ``search``, ``eval``); only
  argparse at import time. ``eval`` runs the shared pipeline of :mod:`e5studio.retrieval.evaluate`.
"""
