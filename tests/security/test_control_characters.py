"""Issue 26, points 6 and 7: a control character (NUL, a line break) in a path, a name or a parameter that
reaches a file, a log line or a process argument is a 400 naming the field — never a 500, a forged log line or
a job record left behind (a real server on loopback)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from e5studio.errors import ParamError
from e5studio.jobspec.params import plain_text
from tests.serving.server import ServerProcess

CSRF_RE = re.compile(r'name="csrf-token" content="([^"]+)"')
HOSTILE = {"NUL": "data/\x00x", "line feed": "m\nINFO forged line", "carriage return": "m\rx",
           "line separator": "m\u2028x", "escape": "m\x1b[31mx"}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_the_check_names_the_field_and_the_character_without_echoing_the_value(name: str) -> None:
    with pytest.raises(ParamError) as caught:
        plain_text("model", HOSTILE[name])
    message = str(caught.value)
    assert message.startswith("model: must not contain control characters (U+")
    assert HOSTILE[name] not in message and "forged" not in message
    assert plain_text("model", "intfloat/e5-large-v2 (tuned) — ü") == "intfloat/e5-large-v2 (tuned) — ü"


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_an_endpoint_model_with_a_control_character_is_a_400(server: ServerProcess, name: str) -> None:
    def names() -> set[str]:
        return {e["name"] for e in server.admin("GET", "/api/admin/endpoints").json()["endpoints"]}

    before = names()
    answer = server.admin("POST", "/api/admin/endpoints",
                          {"project": "default", "name": "probe", "model": HOSTILE[name], "batch_size": 1})
    assert answer.status_code == 400, answer.text
    assert "model" in answer.json()["error"]["message"]
    assert names() == before  # nothing recorded


def test_a_dataset_folder_with_a_nul_is_a_400_and_records_nothing(server: ServerProcess, tmp_path: Path) -> None:
    with httpx.Client(base_url=server.base_url, timeout=60, trust_env=False, follow_redirects=False) as http:
        assert http.post("/ui/login", data={"token": server.admin_token, "next": "/ui/"}).status_code == 303
        csrf = CSRF_RE.search(http.get("/ui/datasets").text)
        assert csrf
        answer = http.post("/ui/datasets/path", data={"name": "probe", "path": f"{tmp_path}/\x00x",
                                                       "description": "", "csrf_token": csrf.group(1)})
        assert answer.status_code == 400, answer.text
        assert "must not contain control characters" in answer.text
        assert "probe" not in http.get("/ui/datasets").text


def _upload_dataset(http: httpx.Client, csrf: str) -> None:
    files = {"passages": ("passages.jsonl", b'{"contents": "a"}\n{"contents": "b"}\n'),
             "train": ("train.jsonl", b'{"query": "q", "positives": {"doc_id": [0]}}\n')}
    answer = http.post("/ui/datasets/upload", data={"name": "ctl", "description": "", "csrf_token": csrf},
                       files=files)
    assert answer.status_code == 303, answer.text


@pytest.mark.parametrize(("path", "field", "value"), [
    ("/ui/jobs", "model_other", "data/\x00x"),
    ("/ui/jobs", "model_other", "m\nINFO job finished"),
    ("/ui/jobs", "eval_dir", "data/\x00x"),
    ("/ui/batch-jobs", "model", "data/\x00x"),
])
def test_a_job_form_with_a_control_character_is_a_400_and_leaves_no_job(server: ServerProcess, path: str,
                                                                        field: str, value: str) -> None:
    job_link = re.compile(r"/ui/jobs/([0-9a-f]{16})")
    with httpx.Client(base_url=server.base_url, timeout=60, trust_env=False, follow_redirects=False) as http:
        assert http.post("/ui/login", data={"token": server.admin_token, "next": "/ui/"}).status_code == 303
        csrf = CSRF_RE.search(http.get("/ui/datasets").text)
        assert csrf
        if "ctl" not in http.get("/ui/datasets").text:
            _upload_dataset(http, csrf.group(1))
        def jobs() -> set[str]:  # train jobs and batch jobs, each listed on its own page
            return {j for page in ("/ui/jobs", "/ui/batch-jobs") for j in job_link.findall(http.get(page).text)}

        jobs_before = jobs()
        form = {"dataset": "ctl", "model": "all-minilm-l6-v2", "csrf_token": csrf.group(1), field: value}
        answer = http.post(path, data=form)
        assert answer.status_code == 400, answer.text[:2000]
        assert f"{field.removesuffix('_other')}: must not contain control characters" in answer.text
        assert jobs() == jobs_before  # no job recorded
