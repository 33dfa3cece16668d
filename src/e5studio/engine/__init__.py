"""The engine: text -> E5 embeddings. Knows tensors and checkpoints, nothing of HTTP, SQL or jobs."""
