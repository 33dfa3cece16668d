"""The deploy gate through the real CLI and admin API against the real server: a fine-tuned model that lost more
than 0.01 nDCG@10 on an out-of-domain set is refused unless forced, the table is shown, the choice recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from e5studio.errors import ConflictError, InputError
from e5studio.jobspec import deploy_gate
from e5studio.jobspec.deploy_gate import (
    IN_DOMAIN,
    OUT_OF_DOMAIN,
    ModelEvaluation,
    SetResult,
    check,
    judge,
    read_evaluation,
    write_evaluation,
)
from e5studio.jobspec.layout import EVALUATION_FILE
from tests.serving.server import MINILM, ServerProcess, assert_error, json_prefix

PROJECT = "gate"


def evaluation(ood_change: float) -> ModelEvaluation:
    return ModelEvaluation("all-minilm-l6-v2", "final (a = 0.5)", (
        SetResult("scifact", IN_DOMAIN, "/data/scifact", {"ndcg@10": 0.6236}, {"ndcg@10": 0.6975}),
        SetResult("cranfield", OUT_OF_DOMAIN, "/data/cranfield", {"ndcg@10": 0.3000}, {"ndcg@10": 0.3120}),
        SetResult("med", OUT_OF_DOMAIN, "/data/med", {"ndcg@10": 0.5000}, {"ndcg@10": 0.5000 + ood_change}),
    ), {"alpha": 0.5})


def model_folder(root: Path, name: str, minilm_dir: Path, ood_change: float | None) -> Path:
    """MiniLM's files (linked) plus, unless None, a train job's evaluation record."""
    folder = root / name
    folder.mkdir()
    for item in minilm_dir.iterdir():
        os.symlink(item, folder / item.name)
    if ood_change is not None:
        write_evaluation(folder, evaluation(ood_change))
    return folder


# ------------------------------------------------------------------------------------------------ the rule


def test_the_gate_rule(tmp_path: Path) -> None:
    for name, change in (("lost", -0.018), ("kept", -0.01), ("gained", 0.02)):
        (tmp_path / name).mkdir()
        write_evaluation(tmp_path / name, evaluation(change))
    refused = judge(str(tmp_path / "lost"))
    assert refused is not None and not refused.passed and refused.failures == (
        "med: nDCG@10 0.5000 -> 0.4820 (-0.0180)",)
    with pytest.raises(ConflictError, match=r"deploy gate: .* lost more than 0.01 nDCG@10 .* med: nDCG@10 0.5000 "
                                            r"-> 0.4820 \(-0.0180\)\. Deploy it anyway only if .*pass --force"):
        check(str(tmp_path / "lost"))
    forced = json.loads(check(str(tmp_path / "lost"), force=True))
    assert (forced["passed"], forced["forced"], forced["gate_max_loss"]) == (False, True, 0.01)
    assert [s["name"] for s in forced["sets"]] == ["scifact", "cranfield", "med"]
    for name in ("kept", "gained"):  # a loss of exactly 0.01 is still allowed
        record = json.loads(check(str(tmp_path / name)))
        assert (record["passed"], record["forced"]) == (True, False)
    assert json.loads(check(str(tmp_path / "kept"), force=True))["forced"] is False  # nothing to force
    # not gated: hub ids, aliases, folders without the record, names that are no paths
    assert check("intfloat/e5-large-v2") == check(MINILM) == check(str(tmp_path)) == check("x\0y") == ""
    assert check("a" * 5000) == ""
    table = judge(str(tmp_path / "lost")).table()  # type: ignore[union-attr]
    assert "med" in table and "-0.0180  <- loses more than the gate allows" in table


def test_a_damaged_record_is_named(tmp_path: Path) -> None:
    (tmp_path / EVALUATION_FILE).write_text("{not json")
    with pytest.raises(InputError, match=f"{EVALUATION_FILE}: malformed JSON"):
        read_evaluation(str(tmp_path))
    (tmp_path / EVALUATION_FILE).write_text(json.dumps({"base_model": "m", "sets": [{"name": "x"}]}))
    with pytest.raises(InputError, match="not a valid e5studio evaluation record"):
        check(str(tmp_path))
    (tmp_path / EVALUATION_FILE).write_bytes(b" " * (2 << 20))  # read no further than the bound
    with pytest.raises(InputError, match="larger than 1048576 bytes"):
        check(str(tmp_path))
    (tmp_path / EVALUATION_FILE).write_bytes(b"\xff\xfe{}")
    with pytest.raises(InputError, match="not UTF-8 text"):
        check(str(tmp_path))
    assert deploy_gate.summary("") is None and deploy_gate.summary("{bad")["passed"] is False  # type: ignore[index]


# ------------------------------------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate-models")
    return {"lost": model_folder(root, "lost", minilm_dir, -0.018),
            "kept": model_folder(root, "kept", minilm_dir, +0.004)}


def _create(server: ServerProcess, name: str, model: Path, *extra: str) -> Any:
    return server.cli("endpoints", "create", PROJECT, name, "--model", str(model), *extra)


def test_cli_refuses_a_model_that_forgot_then_deploys_it_forced(server: ServerProcess,
                                                               folders: dict[str, Path]) -> None:
    assert server.cli("projects", "create", PROJECT).returncode == 0
    refused = _create(server, "forgot", folders["lost"])
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "HTTP 409" in refused.stderr and "deploy gate" in refused.stderr and "pass --force" in refused.stderr
    assert "med: nDCG@10 0.5000 -> 0.4820 (-0.0180)" in refused.stderr
    assert "forgot" not in server.cli("endpoints", "list", "--project", PROJECT).stdout  # nothing was created

    forced = _create(server, "forgot", folders["lost"], "--force")
    assert forced.returncode == 0, forced.stderr
    server.remember(forced.stdout)
    view = json_prefix(forced.stdout)["endpoint"]
    assert view["deploy_gate"]["forced"] is True and view["deploy_gate"]["passed"] is False
    assert "deploy gate (FORCED)" in forced.stdout and "med" in forced.stdout and "-0.0180" in forced.stdout
    shown = server.cli("endpoints", "show", PROJECT, "forgot")
    assert shown.returncode == 0 and "deploy gate (FORCED)" in shown.stdout  # recorded with the endpoint
    assert server.wait_status(PROJECT, "forgot")["status"] == "Live"
    assert server.cli("endpoints", "delete", PROJECT, "forgot").returncode == 0


def test_admin_api_records_a_passing_gate_and_leaves_other_models_ungated(server: ServerProcess,
                                                                          folders: dict[str, Path]) -> None:
    if PROJECT not in {p["name"] for p in server.admin("GET", "/api/admin/projects").json()["projects"]}:
        assert server.admin("POST", "/api/admin/projects", {"name": PROJECT}).status_code == 201
    answer = server.admin("POST", "/api/admin/endpoints", {"project": PROJECT, "name": "kept",
                                                           "model": str(folders["kept"])})
    assert answer.status_code == 201, answer.text
    gate = answer.json()["endpoint"]["deploy_gate"]
    assert (gate["passed"], gate["forced"], gate["base_model"]) == (True, False, "all-minilm-l6-v2")
    assert {s["name"]: s["model"]["ndcg@10"] - s["base"]["ndcg@10"] for s in gate["sets"]}["med"] == \
        pytest.approx(0.004)
    plain = server.admin("POST", "/api/admin/endpoints", {"project": PROJECT, "name": "plain", "model": MINILM})
    assert plain.status_code == 201 and plain.json()["endpoint"]["deploy_gate"] is None
    refused = server.admin("POST", "/api/admin/endpoints", {"project": PROJECT, "name": "x",
                                                            "model": str(folders["lost"]), "force": False})
    assert_error(refused, 409, "deploy gate")
    assert '"force": true' in refused.json()["error"]["message"]
    assert_error(server.admin("POST", "/api/admin/endpoints", {"project": PROJECT, "name": "x",
                                                               "model": str(folders["lost"]), "force": "yes"}),
                 400, "'force' must be true or false")
    for name in ("kept", "plain"):
        assert server.admin("DELETE", f"/api/admin/projects/{PROJECT}/endpoints/{name}").status_code == 200
