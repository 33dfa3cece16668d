"""Training's import of the forward (:func:`e5studio.engine.encoder.encode`): a packed batch through the encoder
module to pooled, L2-normalised rows, with gradients. Kept so that ``jobs/train`` need not change with the
engine's modules; new code imports it from :mod:`e5studio.engine.encoder`."""

from e5studio.engine.encoder import encode

__all__ = ["encode"]
