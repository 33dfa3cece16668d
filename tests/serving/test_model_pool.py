"""The model pool follows the store: models of endpoints created elsewhere load, models no endpoint uses any more
(their endpoints deleted here or through another replica) are unloaded, after their queued requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from e5studio.control.store import LIVE, Store
from e5studio.errors import UnavailableError
from e5studio.serving.batcher import QueueLimits
from e5studio.serving.edge import Metrics
from e5studio.serving.models import ModelPool, model_key
from e5studio.settings import EngineSettings
from tests import stores


class FakeEmbedder:
    """What the pool and its batcher use of an Embedder: rows of [first id, length]."""

    dim = 2
    max_length = 16
    max_batch_tokens = 1024

    def __init__(self, settings: EngineSettings) -> None:
        self.model = settings.model

    def embed_ids(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        return np.asarray([[s[0], len(s)] for s in sequences], dtype=np.float32)


def test_a_model_whose_endpoints_are_gone_is_unloaded_and_one_still_used_is_kept(tmp_path: Path) -> None:
    with Store(stores.store_for(tmp_path)) as store:
        store.create_project("p")
        a, _ = store.create_endpoint("p", "a", "model-a", 32)
        b, _ = store.create_endpoint("p", "b", "model-b", 32)
        b2, _ = store.create_endpoint("p", "b2", "model-b", 1)  # the same model as b
        pool = ModelPool(store, EngineSettings(), Metrics(), QueueLimits(), loader=FakeEmbedder)
        pool.restore()
        assert pool.wait(30)
        assert pool.loaded_models() == [model_key("model-a"), model_key("model-b")]
        deadline = time.monotonic() + 10
        while {e.status for e in store.list_endpoints()} != {LIVE} and time.monotonic() < deadline:
            time.sleep(0.01)
        assert {e.name: e.status for e in store.list_endpoints()} == {"a": LIVE, "b": LIVE, "b2": LIVE}
        _, batcher_a = pool.get(a)

        store.delete_endpoint(a.id)  # as another replica would: this pool only sees the store
        store.delete_endpoint(b.id)
        assert pool.sync() == []
        assert pool.loaded_models() == [model_key("model-b")], "b2 still uses model-b"
        with pytest.raises(UnavailableError):
            pool.get(a)
        deadline = time.monotonic() + 10
        while batcher_a._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not batcher_a._thread.is_alive(), "the unloaded model's worker stopped"
        _, batcher_b = pool.get(b2)
        rows = asyncio.run(batcher_b.submit([np.asarray([5, 0, 0])]))
        np.testing.assert_array_equal(rows, [[5, 3]])

        c, _ = store.create_endpoint("p", "c", "model-a", 32)  # the model comes back with a new endpoint
        assert [e.name for e in pool.sync()] == ["c"]
        assert pool.wait(30) and pool.loaded_models() == [model_key("model-a"), model_key("model-b")]
        deadline = time.monotonic() + 10  # Live is recorded just after the load is marked done
        while store.get_endpoint("p", "c").status != LIVE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.get_endpoint("p", "c").status == LIVE
        pool.close()
