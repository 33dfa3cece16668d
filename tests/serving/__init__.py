"""Tests of the HTTP server: real clients against a real `e5studio serve`, and the batcher in-process."""
