"""Issue 26, point 2: a dataset named by path cannot read other files of the server, and no message quotes a
file's contents (a real server, the web form and the CLI)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serving.server import ServerProcess, cli_env

CSRF_RE = re.compile(r'name="csrf-token" content="([^"]+)"')
SECRET = "root:*:20228:0:99999:7:::supersecret"


def _folder(tmp_path: Path, passages: str | None, link_to: Path | None = None) -> Path:
    folder = tmp_path / "dataset"
    folder.mkdir()
    if link_to is not None:
        (folder / "passages.jsonl").symlink_to(link_to)
    else:
        (folder / "passages.jsonl").write_text(passages or "", encoding="utf-8")
    (folder / "train.jsonl").write_text('{"query": "q", "positives": {"doc_id": [0]}}\n', encoding="utf-8")
    return folder


def _submit(server: ServerProcess, folder: Path) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, timeout=60, trust_env=False, follow_redirects=False) as http:
        assert http.post("/ui/login", data={"token": server.admin_token, "next": "/ui/"}).status_code == 303
        csrf = CSRF_RE.search(http.get("/ui/datasets").text)
        assert csrf
        return http.post("/ui/datasets/path", data={"name": "probe", "path": str(folder), "description": "",
                                                    "csrf_token": csrf.group(1)})


def test_a_link_out_of_the_folder_is_refused_without_its_contents(server: ServerProcess, tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("\n".join([SECRET] * 50) + "\n", encoding="utf-8")
    folder = _folder(tmp_path, None, link_to=secret)
    answer = _submit(server, folder)
    assert answer.status_code == 400, answer.status_code
    assert "link to a file outside its folder" in answer.text
    assert "supersecret" not in answer.text and "root:" not in answer.text
    done = subprocess.run([sys.executable, "-m", "e5studio", "datasets", "validate", str(folder)],
                          capture_output=True, text=True, env=cli_env(), timeout=120)
    assert done.returncode != 0 and "outside its folder" in done.stdout + done.stderr
    assert "supersecret" not in done.stdout + done.stderr


def test_malformed_lines_are_located_not_quoted(server: ServerProcess, tmp_path: Path) -> None:
    folder = _folder(tmp_path, f'{{"contents": "a"}}\n{SECRET}\n{{"contents": "{SECRET}\n')
    answer = _submit(server, folder)
    assert answer.status_code == 400
    assert "passages.jsonl:2: malformed JSON at column 1" in answer.text, answer.text[-2000:]
    assert "passages.jsonl:3: malformed JSON: the value of &#34;contents&#34;" in answer.text or \
        'passages.jsonl:3: malformed JSON: the value of "contents"' in answer.text
    assert "supersecret" not in answer.text and "root:" not in answer.text


def test_an_evaluation_set_reads_only_its_own_files(tmp_path: Path) -> None:
    """``--eval-dir`` / ``eval --data``: a link out of the folder is refused, bad lines are located, not quoted."""
    from e5studio.errors import InputError
    from e5studio.retrieval.evaluate import load_eval_set

    secret = tmp_path / "shadow"
    secret.write_text(f"{SECRET}\n", encoding="utf-8")
    folder = tmp_path / "evalset"
    folder.mkdir()
    (folder / "passages.jsonl").write_text('{"contents": "a"}\n', encoding="utf-8")
    (folder / "queries.test.jsonl").write_text('{"qid": "1", "query": "q"}\n', encoding="utf-8")
    (folder / "qrels.test.tsv").symlink_to(secret)
    with pytest.raises(InputError, match="outside its folder") as linked:
        load_eval_set(folder)
    (folder / "qrels.test.tsv").unlink()
    (folder / "qrels.test.tsv").write_text(f"{SECRET}\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"qrels.test.tsv:1: expected qid<TAB>doc_line<TAB>grade") as malformed:
        load_eval_set(folder)
    (folder / "qrels.test.tsv").write_text("1\t0\t1\n", encoding="utf-8")
    (folder / "queries.test.jsonl").write_bytes(b'{"qid": "1", "query": "q"}\n' + SECRET.encode() + b"\n\xff\n")
    with pytest.raises(InputError, match=r"queries.test.jsonl:2: malformed JSON at column 1") as bad_json:
        load_eval_set(folder)
    for caught in (linked, malformed, bad_json):
        assert "supersecret" not in str(caught.value) and "root:" not in str(caught.value)
