"""The control plane: projects, endpoints and their keys in SQLite. Imports no ML code."""
