"""Several replicas of `e5studio serve` on one PostgreSQL control store (issue 15)."""
