"""HTTP serving: dynamic batching, routes per API shape, the error table."""
