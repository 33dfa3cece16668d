"""e5studio: a self-hosted platform for the E5 Large V2 text-embedding model."""

__version__ = "0.1.0"
