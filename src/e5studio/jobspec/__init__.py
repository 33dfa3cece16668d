"""Declarative job specs (pure Python, no ML imports): parameters, output file layout, dataset format."""
