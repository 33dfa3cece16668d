"""One module per API shape."""
