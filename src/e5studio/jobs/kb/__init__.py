"""Knowledge bases: documents -> chunks -> stamped vectors (on the embed-corpus machinery), search, re-embed.

- ``stamp``: what shaped a version's vectors; mixing two stamps is refused.
- ``build``: version folders and their batches (embed-corpus outputs with chunking), counts, deletions,
  documents rebuilt from their chunks for a re-embedding.
- ``pgvector``: a version's table in PostgreSQL and the stamp table.
- ``ops``: create, add, search, reembed, delete (what the CLI runs); ``commands``: the CLI (``e5studio kb``).
"""
