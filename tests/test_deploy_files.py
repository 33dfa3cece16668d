"""The container image and the deployment examples (no container runs here): the Dockerfile's instructions,
``.dockerignore``, ``deploy/compose.yaml`` with its nginx config, and ``deploy/k8s/`` are parsed and their key
facts checked against the code: ports, probes on routes that exist, flags and ``E5STUDIO_*`` names that the
CLI's ``--help`` names, the pinned torch, the extras, a non-root user, and the wiring between the pieces."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.serving.server import cli_env

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PORT = 8000
REPLICAS = 2


# ---------------------------------------------------------------------------------------------- readers


def dockerfile(path: Path = REPO / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments and blank lines dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        word, _, rest = whole.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def exec_form(arguments: str) -> list[str]:
    """A JSON-array instruction argument (``["a", "b"]``); AssertionError for the shell form."""
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    found = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            found[name] = value
    return found


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last:]


@cache
def help_text(*command: str) -> str:
    """``e5studio <command> --help``, as a user sees it."""
    result = subprocess.run([sys.executable, "-m", "e5studio", *command, "--help"], capture_output=True, text=True,
                            env=cli_env(), timeout=60)
    assert result.returncode == 0, f"e5studio {' '.join(command)} --help failed:\n{result.stderr}"
    return result.stdout


def flags(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def assert_known(argv: list[str], env_names: set[str], *command: str) -> None:
    """Every ``--flag`` of ``argv`` and every ``E5STUDIO_*`` name is one ``e5studio <command> --help`` names."""
    text = help_text(*command)
    for flag in flags(argv):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{flag} is not a flag of e5studio " \
                                                                          f"{' '.join(command)}"
    for name in {n for n in env_names if n.startswith("E5STUDIO_")}:
        assert f"${name}" in text or name in text, f"{name} is not named by e5studio {' '.join(command)} --help"


@cache
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # merge keys (<<) resolved
    return data


@cache
def k8s() -> dict[str, list[dict[str, Any]]]:
    """Every manifest under deploy/k8s, by kind."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def routes() -> set[str]:
    from e5studio.serving.routes import health

    return {route.path for route in health.router.routes}  # type: ignore[attr-defined]


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match plus ``**``) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or a folder above it decides; ``!`` re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _docker_pattern(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


# ---------------------------------------------------------------------------------------------- Dockerfile


def test_the_dockerfile_installs_cpu_torch_first_then_the_project_with_its_extras() -> None:
    instructions = dockerfile()
    args = arg_defaults(instructions)
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    pinned = re.search(r"torch==([\d.]+)", (REPO / "Makefile").read_text())
    assert pinned and args["TORCH_VERSION"] == pinned.group(1)  # the torch the Makefile and README name
    assert args["BASE_IMAGE"].startswith("python:") and "slim" in args["BASE_IMAGE"]
    assert all(rest.split()[0] == "${BASE_IMAGE}" for word, rest in instructions if word == "FROM")
    runs = [rest for word, rest in instructions if word == "RUN"]
    torch = next(i for i, r in enumerate(runs) if "torch==" in r)
    assert '--index-url "${TORCH_INDEX}"' in runs[torch] and '"torch==${TORCH_VERSION}"' in runs[torch]
    project = next(i for i, r in enumerate(runs) if "/src[" in r)
    assert torch < project
    extras = args["EXTRAS"].split(",")
    assert {"serve", "onnx"} <= set(extras)
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) <= set(declared), f"extras {extras} not all in pyproject.toml"
    assert any("psycopg" in d for e in extras for d in declared[e]), "no PostgreSQL driver for --store"
    # the CUDA variant is documented where the build args are
    text = (REPO / "Dockerfile").read_text()
    assert "--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu" in text


def test_the_image_serves_on_8000_as_a_non_root_user_with_a_readiness_healthcheck() -> None:
    final = final_stage(dockerfile())
    words = [word for word, _ in final]
    user = next(rest for word, rest in final if word == "USER")
    assert user.split(":")[0] not in ("root", "0")
    assert any(f"--uid {user.split(':')[0]} " in rest for word, rest in final if word == "RUN")  # made here
    assert words.index("USER") < words.index("ENTRYPOINT")
    assert [rest for word, rest in final if word == "EXPOSE"] == [str(PORT)]
    entrypoint = exec_form(next(rest for word, rest in final if word == "ENTRYPOINT"))
    assert entrypoint[:4] == ["e5studio", "serve", "--host", "0.0.0.0"], entrypoint
    if "--port" in entrypoint:
        assert entrypoint[entrypoint.index("--port") + 1] == str(PORT)
    assert_known(entrypoint[2:], set(), "serve")
    healthcheck = next(rest for word, rest in final if word == "HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    probe = exec_form(command)
    assert f"http://127.0.0.1:{PORT}/ready" in " ".join(probe)
    assert "/ready" in routes()
    assert re.search(r"--start-period=\d+", options)
    assert not any(word == "CMD" for word in words), "CMD would replace nothing the ENTRYPOINT needs"


def test_the_build_context_is_the_package_only() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for copied in ("pyproject.toml", "README.md", "src/e5studio/cli.py", "src/e5studio/web/templates/login.html"):
        assert not dockerignored(copied, patterns), copied
    for left in (".venv/bin/python", ".git/HEAD", "checkpoints/e5-large-v2-shape/model.safetensors",
                 "tests/conftest.py", ".e5studio/e5studio.db", "src/e5studio/__pycache__/cli.cpython-311.pyc",
                 "artifacts/ui/x.png"):
        assert dockerignored(left, patterns), left
    for word, rest in dockerfile():
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _ = shlex.split(rest)
            for source in sources:
                assert (REPO / source).exists() and not dockerignored(source, patterns), source


# ---------------------------------------------------------------------------------------------- compose


def service_argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command if isinstance(command, list) else shlex.split(command)


STORE_ENV = "E5STUDIO_STORE"


def store_of(argv: list[str], env: dict[str, str]) -> str:
    """The control store a command uses: ``--store URL``, else ``$E5STUDIO_STORE`` (what ``--help`` says)."""
    if "--store" in argv:
        return argv[argv.index("--store") + 1]
    assert STORE_ENV in env, f"neither --store nor {STORE_ENV}: {argv} {sorted(env)}"
    return env[STORE_ENV]


def test_compose_runs_postgres_then_migrate_then_two_replicas_behind_nginx() -> None:
    services = compose()["services"]
    postgres = services["postgres"]
    assert postgres["image"] == "pgvector/pgvector:pg16"
    env = postgres["environment"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])

    migrate = services["migrate"]
    assert migrate["entrypoint"] == ["e5studio", "store", "migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    url = store_of(service_argv(migrate), migrate.get("environment", {}))
    assert url.startswith("postgres://") and "@postgres:5432/" in url
    assert url.startswith(f"postgres://{env['POSTGRES_USER']}:") and url.endswith(f"/{env['POSTGRES_DB']}")
    assert_known(service_argv(migrate), set(migrate.get("environment", {})), "store", "migrate")

    replicas = {name: s for name, s in services.items() if "entrypoint" not in s and s.get("build")}
    assert len(replicas) == REPLICAS, sorted(replicas)
    for name, replica in replicas.items():
        argv = service_argv(replica)
        assert store_of(argv, replica["environment"]) == url, name  # the database migrate prepared
        assert "--store" not in argv  # the password stays out of the process list
        assert_known(argv, set(replica["environment"]), "serve")
        assert "healthcheck" not in replica or "/ready" in json.dumps(replica["healthcheck"])  # else the image's
        assert {v.split(":")[1] for v in replica["volumes"]} == {"/data", "/models"}

    def waits_for_migrate(name: str) -> bool:
        depends = replicas[name]["depends_on"]
        return depends.get("migrate", {}).get("condition") == "service_completed_successfully" or any(
            waits_for_migrate(other) for other in depends if other in replicas)

    assert all(waits_for_migrate(name) for name in replicas)
    data_volumes = {v.split(":")[0] for r in replicas.values() for v in r["volumes"] if v.endswith(":/data")}
    assert len(data_volumes) == 1 and data_volumes <= set(compose()["volumes"])  # job outputs shared
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith(".")}
    assert named <= set(compose()["volumes"]), named - set(compose()["volumes"])

    lb = services["lb"]
    assert lb["image"].startswith("nginx:")
    assert lb["ports"] == [f"{PORT}:80"]
    mounted = lb["volumes"][0].split(":")
    assert mounted[1] == "/etc/nginx/conf.d/default.conf"
    nginx = (DEPLOY / mounted[0]).read_text()
    upstream = set(re.findall(r"^\s*server\s+([\w.-]+):(\d+)", nginx, re.M))
    assert upstream == {(name, str(PORT)) for name in replicas}
    assert re.search(r"listen\s+80;", nginx) and "proxy_pass http://e5studio;" in nginx
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in nginx  # the client cannot choose its address
    assert all(r["environment"]["FORWARDED_ALLOW_IPS"] == "*" for r in replicas.values())
    assert set(lb["depends_on"]) == set(replicas)


# ---------------------------------------------------------------------------------------------- kubernetes


def container_env(container: dict[str, Any], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """A container's environment: values, and the keys of the Secrets (defined here) they refer to."""
    env = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def expand(argv: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' ``$(VAR)`` in args, from the container's environment."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in argv]


def test_k8s_deployment_probes_service_secret_and_migrate_job_fit_together() -> None:
    kinds = k8s()
    assert sorted(kinds) == ["Deployment", "Job", "PersistentVolumeClaim", "Secret", "Service"]
    secrets = {s["metadata"]["name"]: s["stringData"] for s in kinds["Secret"]}
    (deployment,) = kinds["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == REPLICAS
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": PORT}
    ready, alive = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/ready" and ready["port"] in ("http", PORT)
    assert alive["path"] in routes() and alive["path"] != "/ready" and alive["port"] in ("http", PORT)
    env = container_env(container, secrets)
    argv = expand(container.get("args", []), env)
    store = store_of(argv, env)
    assert store.startswith("postgres://")
    assert "--store" not in argv  # the password stays out of the process list
    assert_known(argv, set(env), "serve")
    user = next(rest for word, rest in final_stage(dockerfile()) if word == "USER").split(":")[0]
    assert pod["securityContext"]["runAsNonRoot"] is True and str(pod["securityContext"]["runAsUser"]) == user
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {c["metadata"]["name"] for c in kinds["PersistentVolumeClaim"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/data", "/models"} <= mounts

    (service,) = kinds["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert all(p["targetPort"] in ("http", PORT) for p in service["spec"]["ports"])

    (job,) = kinds["Job"]
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert migrate["command"] == ["e5studio", "store", "migrate"] and migrate["image"] == container["image"]
    job_env = container_env(migrate, secrets)
    job_argv = expand(migrate.get("args", []), job_env)
    assert store_of(job_argv, job_env) == store  # the database the replicas use
    assert_known(job_argv, set(job_env), "store", "migrate")
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


@pytest.mark.parametrize("readme", [REPO / "README.md", DEPLOY / "README.md"])
def test_the_readmes_point_at_the_examples(readme: Path) -> None:
    text = readme.read_text()
    if readme.parent == REPO:
        assert "## Container image and deployment examples" in text and "(deploy/README.md)" in text
    else:
        assert "not tested in containers" in text
        for name in ("compose.yaml", "nginx.conf", "k8s/", "store migrate", "TORCH_INDEX", "/ready", "/health"):
            assert name in text, name
