"""The replica's copy of the endpoints and key hashes finds what the store's lookup finds (ids before names,
names only where they are unique without a project), and nothing the store would refuse."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from e5studio.control.store import Store
from e5studio.errors import InputError, NotFoundError
from e5studio.serving.inference import Copy, EndpointRef
from tests import stores


def test_the_copy_finds_what_the_store_finds(tmp_path: Path) -> None:
    with Store(stores.store_for(tmp_path)) as store:
        for project in ("alpha", "beta"):
            store.create_project(project)
        made = {}
        for project, name in (("alpha", "search"), ("alpha", "only-alpha"), ("beta", "search"), ("beta", "other")):
            made[(project, name)] = store.create_endpoint(project, name, "all-minilm-l6-v2", 1)
        beta_id = store.get_endpoint("beta", "other").project_id
        copy = Copy(store.endpoints_and_key_hashes(), 0, time.monotonic())
        ids = [endpoint.id for endpoint, _ in made.values()]
        projects = ["alpha", "beta", beta_id, "gamma", "", "a\x00b", None]
        endpoints = ["search", "only-alpha", "other", "missing", "", "x" * 70, *ids]
        for project, endpoint in itertools.product(projects, endpoints):
            try:
                expected = store.endpoint_for_call(project, endpoint)
            except (NotFoundError, InputError):  # the request goes to the store, which says what is wrong
                expected = None
            found = copy.find(EndpointRef(endpoint, project))
            assert found == expected, (project, endpoint, found, expected)
        _, key = made[("beta", "other")]
        assert copy.opens_any(["e5s_nothing", key]) and not copy.opens_any(["e5s_nothing"])
