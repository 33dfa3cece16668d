"""What shaped a knowledge base version's vectors (its stamp), and the refusal to mix two stamps.

A stamp records the model (name, resolved path, SHA-256 of the files that shape the vectors, dimension, max
length), the endpoint it was served as, the precision, the prefixes by role and the chunking. Vectors of two
stamps are not comparable: writing into or searching a version with another stamp is refused with both named
(:func:`check_model`, the one check of the CLI and the HTTP route); ``e5studio kb reembed`` makes a version
with the new one. In ``retrieval`` so that both the jobs and the serving half use it.
"""

from __future__ import annotations

from typing import Any

from e5studio.errors import ConflictError
from e5studio.vocabulary import PASSAGE_PREFIX, QUERY_PREFIX

# what must be equal for two sets of vectors to be compared (the endpoint's name may differ)
_COMPARED = ("model_sha256", "dim", "max_length", "precision", "prefixes", "chunking")


def make_stamp(model: dict[str, Any], precision: str, chunking: dict[str, Any], endpoint: dict[str, str]
               ) -> dict[str, Any]:
    """The stamp of vectors made by ``model`` (:func:`e5studio.engine.model_identity.model_identity`)."""
    return {"model": model["name"], "model_path": model["path"], "model_sha256": model["sha256"],
            "dim": model["dim"], "max_length": model["max_length"], "precision": precision,
            "prefixes": {"query": QUERY_PREFIX, "passage": PASSAGE_PREFIX}, "chunking": chunking,
            "endpoint": endpoint}


def describe(stamp: dict[str, Any]) -> str:
    chunking = stamp.get("chunking") or {}
    return (f"[model {stamp.get('model')} sha256 {str(stamp.get('model_sha256'))[:12]}, dim {stamp.get('dim')}, "
            f"max length {stamp.get('max_length')}, precision {stamp.get('precision')}, prefixes "
            f"{'query:/passage:' if stamp.get('prefixes') else 'none'}, chunking {chunking.get('mode')} "
            f"{chunking.get('chunk_tokens') or 'auto'}/{chunking.get('overlap')}]")


def differences(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [key for key in _COMPARED if stored.get(key) != now.get(key)]


def endpoint_fields(endpoint: Any) -> dict[str, str]:
    """What a stamp says of the endpoint (a control-store ``Endpoint``) that served the model."""
    return {"id": endpoint.id, "name": endpoint.name, "model": endpoint.model, "precision": endpoint.precision}


def check_model(stored: dict[str, Any], model: dict[str, Any], precision: str, endpoint: dict[str, str],
                action: str) -> dict[str, Any]:
    """The one check of a model against a version's stamp, for every path that embeds a query or a passage
    for it (the CLI's ``kb search|add``, a build continued, the HTTP search route): the stamp ``model``
    (:func:`e5studio.engine.model_identity.identity`) gives at ``precision`` with the version's chunking;
    ConflictError naming both stamps (and ``kb reembed``) where they cannot be mixed."""
    now = make_stamp(model, precision, stored.get("chunking") or {}, endpoint)
    check_same(stored, now, action)
    return now


def check_same(stored: dict[str, Any], now: dict[str, Any], action: str) -> None:
    """ConflictError naming both stamps when ``now`` cannot be mixed with the ``stored`` version's vectors."""
    diff = differences(stored, now)
    if diff:
        raise ConflictError(f"{action} refused: the knowledge base's vectors are stamped {describe(stored)}, "
                            f"this model is stamped {describe(now)} (differs in {', '.join(diff)}); run "
                            "`e5studio kb reembed` to build a version with the new model")
