"""Retrieval over embedding vectors: exact top-k search and IR metrics (nDCG@k, MRR@k, Recall@k, MAP).

Nothing here knows about models: search takes float32 matrices, metrics take plain dictionaries
(``qrels``: query id -> doc id -> relevance grade; ``run``: query id -> doc id -> score).
"""
