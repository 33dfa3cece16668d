"""Submitting a knowledge base's embedding as a job of the server's runner: what the web UI's forms and the
admin API both call (the checks of what they were sent, then :meth:`.job_runner.JobRunner.start_kb`).

``submit_create`` records the knowledge base (no version yet) and starts its ``create`` job; ``submit_reembed``
starts a ``reembed`` job with the knowledge base's endpoint or another one of its project. The job's process
builds the version and switches the searches to it once it is complete; its page shows the progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e5studio.control.database import check_name
from e5studio.control.job_records import JobRecord
from e5studio.control.job_runner import JobRunner
from e5studio.control.knowledge_bases import KnowledgeBase, check_store_url
from e5studio.errors import E5StudioError, InputError
from e5studio.jobspec.params import plain_text

FORMATS = ("auto", "jsonl", "parquet", "text")
CHUNKING_MODES = ("tokens", "none")
MIN_CHUNK_TOKENS = 8
DEFAULT_OVERLAP = 32
MAX_PATH_CHARS = 4096


@dataclass(frozen=True)
class KbCreate:
    """A knowledge base to create: where its documents are on the server and how to read and chunk them."""

    name: str
    endpoint: str  # id or name (of ``project``)
    data: str
    project: str = ""  # "": the endpoint's (the endpoint is then named by id)
    format: str = "auto"
    text_field: str = ""
    id_field: str = ""
    chunking: str = "tokens"
    chunk_tokens: int | None = None
    overlap: int = DEFAULT_OVERLAP
    store_url: str = ""
    description: str = ""


def whole_number(name: str, value: object, default: int | None) -> int | None:
    """A form's or a JSON body's whole number (``""``/None: ``default``); InputError naming the field."""
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
        raise InputError(f"{name.replace('_', ' ')} must be a whole number, got {value!r}")
    return int(value)


def chunking(spec: KbCreate) -> dict[str, Any]:
    """The chunking policy, checked (what fits the model's window is checked by the job, which loads it)."""
    if spec.chunking not in CHUNKING_MODES:
        raise InputError(f"chunking must be one of {', '.join(CHUNKING_MODES)}, got {spec.chunking!r}")
    size, overlap = spec.chunk_tokens, spec.overlap
    if overlap < 0 or overlap > 10_000:
        raise InputError(f"overlap must be between 0 and 10,000 tokens, got {overlap}")
    if size is not None and (size < MIN_CHUNK_TOKENS or overlap * 2 > size or size > 100_000):
        raise InputError(f"chunk tokens must be at least {MIN_CHUNK_TOKENS} and at least twice the overlap "
                         f"({overlap}), got {size}")
    return {"mode": spec.chunking, "chunk_tokens": size, "overlap": overlap}


def submit_create(runner: JobRunner, spec: KbCreate) -> tuple[KnowledgeBase, JobRecord]:
    """Record the knowledge base and start the job that embeds its documents (InputError naming a bad field;
    nothing is recorded then). A job that cannot start leaves nothing recorded either."""
    store = runner.store
    check_name("knowledge base", spec.name)
    policy = chunking(spec)
    for name in ("data", "text_field", "id_field", "description"):
        plain_text(name, getattr(spec, name))
    if spec.format not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got {spec.format!r}")
    if not spec.data or len(spec.data) > MAX_PATH_CHARS:
        raise InputError(f"data: a path on the server of 1 to {MAX_PATH_CHARS:,} characters, got {len(spec.data):,}")
    data = Path(spec.data).expanduser()
    try:
        found = data.exists()
    except (OSError, ValueError) as exc:  # a name too long for the file system, an unencodable one
        raise InputError(f"data: path {spec.data[:200]!r} cannot be read: {exc.__class__.__name__}") from None
    if not found:
        raise InputError(f"data: path {spec.data[:200]!r} does not exist on the server")
    endpoint = store.get_endpoint(spec.project, spec.endpoint) if spec.project else \
        store.get_endpoint_by_id(spec.endpoint)
    kb = store.create_kb(endpoint.project_id, spec.name, endpoint.id, chunking=policy,
                         store_url=check_store_url(spec.store_url), text_field=spec.text_field or "contents",
                         id_field=spec.id_field, description=spec.description)
    source = {"data": str(data.resolve()), "format": spec.format, "text_field": spec.text_field,
              "id_field": spec.id_field}
    try:
        job = runner.start_kb("create", kb, endpoint, source)
    except E5StudioError:
        store.delete_kb(kb.id)
        raise
    return kb, job


def submit_reembed(runner: JobRunner, project: str, kb_ref: str, endpoint_ref: str | None
                   ) -> tuple[KnowledgeBase, JobRecord]:
    """Start the job that builds the knowledge base's next version with ``endpoint_ref``'s model (id or name, of
    the knowledge base's project; default: its own endpoint)."""
    store = runner.store
    kb = store.get_kb(project, kb_ref)
    endpoint = store.get_endpoint(kb.project_id, endpoint_ref) if endpoint_ref else \
        store.get_endpoint_by_id(kb.endpoint_id)
    if endpoint.project_id != kb.project_id:
        raise InputError("the endpoint must be one of the knowledge base's project")
    store.current_kb_version(kb.project_id, kb.id)  # ConflictError while there is none to re-embed
    return kb, runner.start_kb("reembed", kb, endpoint, {})
