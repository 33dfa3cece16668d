"""A deploying endpoint whose model is being downloaded says how far the download is."""

from __future__ import annotations

from pathlib import Path

from e5studio.control.store import DEPLOYING, Store
from e5studio.serving.batcher import QueueLimits
from e5studio.serving.edge import Metrics
from e5studio.serving.models import ModelPool, endpoint_model_key
from e5studio.settings import EngineSettings
from tests import stores


def test_the_download_shows_in_the_deploying_reason(tmp_path: Path) -> None:
    with Store(stores.store_for(tmp_path)) as store:
        store.create_project("p")
        endpoint, _ = store.create_endpoint("p", "e", "e5-large-v2", 32)
        other, _ = store.create_endpoint("p", "other", "e5-base-v2", 32)
        store.set_status(other.id, DEPLOYING, "loading e5-base-v2")
        pool = ModelPool(store, EngineSettings(), Metrics(), QueueLimits(max_requests=4))
        shown = pool._download_progress(endpoint_model_key(endpoint))
        shown(412_300_000, 1_340_000_000)
        got = store.get_endpoint("p", "e")
        assert (got.status, got.status_reason) == (DEPLOYING, "Deploying: downloading 412/1,340 MB")
        shown(500_000_000, 1_340_000_000)  # within a second of the last: not written again
        assert store.get_endpoint("p", "e").status_reason == "Deploying: downloading 412/1,340 MB"
        shown(1_340_000_000, 1_340_000_000)  # the end is always shown
        assert store.get_endpoint("p", "e").status_reason == "Deploying: downloading 1,340/1,340 MB"
        assert store.get_endpoint("p", "other").status_reason == "loading e5-base-v2"


def test_ready_names_what_each_deploying_endpoint_is_doing(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from e5studio.app import create_app
    from e5studio.settings import ServeSettings

    with Store(stores.store_for(tmp_path)) as store:
        store.create_project("p")
        endpoint, _ = store.create_endpoint("p", "e", "e5-large-v2", 32)
        app = create_app(ServeSettings(data_dir=tmp_path), store)
        store.set_status(endpoint.id, DEPLOYING, "Deploying: downloading 412/1,340 MB")
        token = store.ensure_admin_token()
        assert token is not None
        # no lifespan: nothing starts loading; the reasons are shown to the admin only
        answer = TestClient(app).get("/ready", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 503
        assert answer.json()["reasons"] == {"e": "Deploying: downloading 412/1,340 MB"}
