"""The e5studio command line: the only place that wires everything together."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from e5studio import __version__
from e5studio.engine.flags import add_engine_flags, engine_settings
from e5studio.errors import E5StudioError, InputError, StoreUnavailableError
from e5studio.jobs.batch_embed.commands import add_parsers as add_batch_embed_parsers
from e5studio.jobs.kb.commands import add_parsers as add_kb_parsers
from e5studio.jobs.models_commands import add_parsers as add_models_parsers
from e5studio.jobs.train.commands import add_parsers as add_train_parsers
from e5studio.settings import DEFAULT_MODEL, ServeSettings, StoreTimeouts
from e5studio.vocabulary import PRECISIONS

EXIT_RETRYABLE = 75  # EX_TEMPFAIL: the store (or the server) cannot answer now; the same command may work later


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    add_engine_flags(parser, f"hub id, alias (e5-large-v2, e5-base-v2, e5-small-v2, all-minilm-l6-v2) or local "
                             f"directory (default {DEFAULT_MODEL}, or $E5STUDIO_MODEL)")


def cmd_embed(args: argparse.Namespace) -> int:
    from e5studio.engine.embedder import Embedder

    texts = list(args.texts) if args.texts else [line.rstrip("\r\n") for line in sys.stdin]
    embedder = Embedder.load(engine_settings(args))
    if args.verbose:  # on stderr: stdout stays the JSON
        print(f"e5studio: {embedder.checkpoint.path}: {embedder.runtime}", file=sys.stderr, flush=True)
    vectors = embedder.embed(texts, input_type=args.input_type)
    json.dump({"data": vectors.tolist()}, sys.stdout)
    sys.stdout.write("\n")
    return 0


def _endpoint_name(model: str) -> str:
    """A default endpoint name from a model name: its last path part, in the allowed characters."""
    import re

    base = model.rstrip("/").split("/")[-1] or "e5"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", base).lstrip("._-")[:64] or "e5"


def cmd_serve(args: argparse.Namespace) -> int:
    from e5studio.serving.allocator import one_blas_thread, tune_malloc

    one_blas_thread()
    tune_malloc()  # before the server (and the engine) allocate anything
    import logging
    from pathlib import Path

    from e5studio.app import serve

    engine = engine_settings(args)
    settings = ServeSettings(data_dir=Path(args.data_dir), store=_store_url(args), job_lease_s=args.job_lease,
                             host=args.host, port=args.port,
                             default_model=engine.model, engine=engine, max_queue=args.max_queue,
                             max_queue_tokens=args.max_queue_tokens, max_queue_wait_s=args.max_queue_wait,
                             body_timeout_s=args.body_timeout,
                             max_body_bytes=args.max_body_bytes, public_url=args.public_url,
                             forwarded_allow_ips=args.forwarded_allow_ips, cookie_secure=args.cookie_secure,
                             max_upload_bytes=args.max_upload_mb * 1024 * 1024, store_timeouts=_store_timeouts(args))
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # Alembic tells every migration step at INFO, which on a first start buried the admin token: only its
    # warnings are shown
    logging.getLogger("alembic").setLevel(logging.WARNING)
    serve(settings, _endpoint_name(engine.model))
    return 0


def _store_url(args: argparse.Namespace) -> str | None:
    """``--store``, else ``$E5STUDIO_STORE``; None: the SQLite file in ``--data-dir``."""
    import os

    from e5studio.control.database import STORE_ENV

    return args.store or os.environ.get(STORE_ENV) or None


def _store_timeouts(args: argparse.Namespace) -> StoreTimeouts:
    return StoreTimeouts.from_env(connect_s=args.store_connect_timeout, statement_s=args.store_statement_timeout,
                                  checkout_s=args.store_checkout_timeout)


def _store_flags(parser: argparse.ArgumentParser, data_dir_help: str) -> None:
    for name, what in (("connect", "opening a PostgreSQL connection"), ("checkout", "a free pooled connection"),
                       ("statement", "one call's statements and lock waits (SQLite: its busy timeout)")):
        parser.add_argument(f"--store-{name}-timeout", type=float, default=None, metavar="SECONDS", help=f"control "
                            f"store: bound on {what}; past it a call fails, retryably (default "
                            f"${StoreTimeouts.ENV[name + '_s']}, else {getattr(StoreTimeouts(), name + '_s'):g})")
    parser.add_argument("--data-dir", default=".e5studio", help=data_dir_help)
    parser.add_argument("--store", default=None, metavar="URL",
                        help="the control store: postgres://USER[:PASSWORD]@HOST[:PORT]/DB for several servers "
                             "(replicas) sharing one, or a SQLite path (default $E5STUDIO_STORE, else "
                             "DATA_DIR/e5studio.db)")


def _admin(args: argparse.Namespace, method: str, path: str, body: dict[str, object] | None = None) -> object:
    """One admin API call; E5StudioError with the server's message on failure."""
    import os
    import urllib.error
    import urllib.request

    from e5studio.errors import AuthError, InputError

    token = args.admin_token or os.environ.get("E5STUDIO_ADMIN_TOKEN")
    if not token:
        raise AuthError("no admin token: pass --admin-token or set E5STUDIO_ADMIN_TOKEN "
                        "(e5studio serve prints it at first start)")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(args.server.rstrip("/") + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        if exc.code in (429, 503):  # retryable: the server said when (its store away, or it is full)
            wait = exc.headers.get("Retry-After", "1")
            raise StoreUnavailableError(f"{method} {path}: HTTP {exc.code}: {message} (retryable: try again in "
                                        f"{wait} s)", float(wait) if wait.isdigit() else 1.0) from None
        raise InputError(f"{method} {path}: HTTP {exc.code}: {message}") from None
    except urllib.error.URLError as exc:
        raise InputError(f"cannot reach the e5studio server at {args.server}: {exc.reason}") from None


def _print(obj: object) -> None:
    print(json.dumps(obj, indent=2))


def cmd_projects(args: argparse.Namespace) -> int:
    if args.action == "create":
        _print(_admin(args, "POST", "/api/admin/projects", {"name": args.name, "description": args.description}))
    else:
        for p in _admin(args, "GET", "/api/admin/projects")["projects"]:  # type: ignore[index]
            print(f"{p['id']}  {p['name']}  {p['description']}")
    return 0


def cmd_endpoints(args: argparse.Namespace) -> int:
    import urllib.parse

    def path(project: str, endpoint: str) -> str:
        q = urllib.parse.quote
        return f"/api/admin/projects/{q(project, safe='')}/endpoints/{q(endpoint, safe='')}"

    if args.action == "create":
        body = {"project": args.project, "name": args.name, "batch_size": args.batch_size,
                "description": args.description, "model": args.model or DEFAULT_MODEL}
        if args.precision:  # else the server's default (serve --precision)
            body["precision"] = args.precision
        if args.input_type != "none":
            body["input_type"] = args.input_type
        if args.force:
            body["force"] = True
        result = _admin(args, "POST", "/api/admin/endpoints", body)
        _print(result)
        _print_gate(result["endpoint"].get("deploy_gate"))  # type: ignore[index]
        print(f"\nThe key is shown once. Try:\n  {result['curl']}")  # type: ignore[index]
    elif args.action == "list":
        query = f"?project={urllib.parse.quote(args.project)}" if args.project else ""
        for e in _admin(args, "GET", f"/api/admin/endpoints{query}")["endpoints"]:  # type: ignore[index]
            below = "  (reason below)" if e["status_reason"] else ""
            replicas = e.get("replicas")  # servers before replicas do not say
            ready = f"  ready on {replicas['ready']}/{replicas['total']} replicas" if replicas else ""
            print(f"{e['project_name']}/{e['name']}  {e['status']}{below}  model={e['model']}  "
                  f"batch_size={e['batch_size']}  precision={e['precision']}{ready}  {e['urls']['nlp']}")
            for line in _reason_lines(e["status_reason"], e["project_name"], e["name"]):
                print(line)
    elif args.action == "show":
        shown = _admin(args, "GET", path(args.project, args.name))
        _print(shown)
        _print_gate(shown.get("deploy_gate") if isinstance(shown, dict) else None)
    elif args.action == "delete":
        _print(_admin(args, "DELETE", path(args.project, args.name)))
    else:
        _print(_admin(args, "POST", path(args.project, args.name) + "/rotate-key"))
    return 0


def _print_gate(gate: Any) -> None:
    """The deploy gate's table under an endpoint serving a fine-tuned model (nothing for other models)."""
    if not isinstance(gate, dict) or not gate.get("sets"):
        return
    verdict = "passed" if gate.get("passed") else ("FORCED" if gate.get("forced") else "failed")
    print(f"\ndeploy gate ({verdict}): nDCG@10 against the base model {gate.get('base_model')} "
          f"(an out-of-domain set may lose at most {gate.get('gate_max_loss')})")
    print(f"  {'set':16} {'role':14} {'base':>8} {'model':>8} {'change':>8}")
    for s in gate["sets"]:
        base, model = s["base"]["ndcg@10"], s["model"]["ndcg@10"]
        print(f"  {s['name'][:16]:16} {s['role']:14} {base:8.4f} {model:8.4f} {model - base:+8.4f}")


REASON_LINES = 12  # a longer reason is shortened, with a pointer to `endpoints show`


def _reason_lines(reason: str, project: str, name: str, width: int = 100) -> list[str]:
    """A status reason under its endpoint: every line kept (wrapped at ``width``), indented; past
    :data:`REASON_LINES` lines it is cut with the command that shows it whole."""
    import textwrap

    lines = [part for line in reason.splitlines() for part in
             (textwrap.wrap(line, width, subsequent_indent="  ", break_on_hyphens=False) or [""])]
    if len(lines) > REASON_LINES:
        lines = lines[:REASON_LINES - 1] + [f"... ({len(lines) - REASON_LINES + 1} more lines: "
                                            f"e5studio endpoints show {project} {name})"]
    return [f"    {line}" for line in lines]


def cmd_admin_token(args: argparse.Namespace) -> int:
    """A new admin token, written straight into the control store (whoever can read the data directory is
    an admin anyway); the old token stops working, sessions of the web UI stay until they expire."""
    from e5studio.control.database import store_target
    from e5studio.control.store import Store

    with Store.open(store_target(args.store, args.data_dir), timeouts=_store_timeouts(args)) as store:
        token = store.rotate_admin_token()
    print(f"New admin token (shown once): {token}")
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    """``store migrate``: apply the migrations the store lacks, print them; ``store status``: where it stands."""
    from e5studio.control.database import store_target
    from e5studio.control.store import Store

    target = store_target(args.store, args.data_dir)
    with Store.open(target, migrate=args.action == "migrate", timeouts=_store_timeouts(args)) as store:
        state = store.schema_state()
        if args.action == "migrate":
            for name in store.applied_migrations:
                print(f"applied {name}")
            print(f"store {store.display_url} is at revision {state.current} (the newest this e5studio knows)"
                  if not store.applied_migrations else f"store {store.display_url} is now at revision {state.current}")
            return 0
        print(f"store {store.display_url}: revision {state.current or '(empty)'}; this e5studio's newest: {state.head}")
        if state.pending:
            print(f"pending: {', '.join(state.pending)} (apply with `e5studio store migrate`; `e5studio serve` "
                  "applies them on start)")
            return 1
        return 0


def _add_admin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="http://127.0.0.1:8000", help="e5studio server URL")
    parser.add_argument("--admin-token", default=None, help="admin token (default $E5STUDIO_ADMIN_TOKEN)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e5studio", description="Self-hosted E5 Large V2 embedding platform.")
    parser.add_argument("--version", action="version", version=f"e5studio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser("embed", help="embed texts and print {\"data\": [[...], ...]} like the endpoint",
                           description="Embed TEXTs (or stdin, one text per line) and print the endpoint's JSON.")
    _add_engine_flags(embed)
    embed.add_argument("--input-type", choices=["query", "passage"], default=None,
                       help="add the E5 prefix ('query: ' / 'passage: ') where missing; default: texts as given")
    embed.add_argument("--verbose", action="store_true", help="say on stderr which precision and kernels compute")
    embed.add_argument("texts", nargs="*", metavar="TEXT")
    embed.set_defaults(func=cmd_embed)
    from e5studio.retrieval import precision_check

    precision_check.add_parser(sub)

    serve = sub.add_parser("serve", help="run the endpoint server (SambaStudio- and OpenAI-compatible)",
                           description="Serve every endpoint in the data directory; with none yet, create a default "
                                       "project and an endpoint (batch size 32) for --model.")
    _add_engine_flags(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    _store_flags(serve, "where the control store (by default) and job folders live (default ./.e5studio)")
    serve.add_argument("--job-lease", type=float, default=30.0, metavar="SECONDS",
                       help="a background job's lease: a replica that dies loses its jobs this long after, to be "
                            "marked Interrupted by another replica (default 30)")
    serve.add_argument("--max-queue", type=int, default=256, help="queued requests per model before HTTP 429")
    serve.add_argument("--max-queue-tokens", type=int, default=256 * 1024,
                       help="queued tokens per model (estimated from characters) before HTTP 429")
    serve.add_argument("--max-queue-wait", type=float, default=10.0,
                       help="expected queue wait in seconds (at the measured tokens/s) before HTTP 429 (default 10)")
    serve.add_argument("--body-timeout", type=float, default=30.0,
                       help="seconds a request body may take to arrive (plus 1 s per 64 KiB) before HTTP 408")
    serve.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024, help="request-body limit (HTTP 413)")
    serve.add_argument("--max-upload-mb", type=int, default=1024,
                       help="web UI dataset uploads: limit for both files together, in MiB (default 1024)")
    serve.add_argument("--public-url", default=None, help="base URL printed for endpoints (default http://HOST:PORT)")
    serve.add_argument("--forwarded-allow-ips", default=os.environ.get("FORWARDED_ALLOW_IPS", ""),
                       metavar="ADDRESSES",
                       help="proxies whose X-Forwarded-For/-Proto headers are trusted: comma-separated addresses or "
                            "networks, '*' for any (default: $FORWARDED_ALLOW_IPS, else none: the client is the "
                            "connection's peer)")
    serve.add_argument("--cookie-secure", action=argparse.BooleanOptionalAction, default=None,
                       help="web session cookies only over HTTPS (default: on when --public-url is https://)")
    serve.set_defaults(func=cmd_serve)

    admin_token = sub.add_parser("admin-token", help="make a new admin token (for the web UI login and the CLI)",
                                 description="Rotates the admin token in the control store of --data-dir and "
                                             "prints the new one; the old one stops working.")
    _store_flags(admin_token, "the server's data directory")
    admin_token.set_defaults(func=cmd_admin_token)

    store = sub.add_parser("store", help="the control store's schema: apply migrations, show the revision",
                           description="migrate: apply the migrations the control store lacks (one transaction) and "
                                       "print them; status: its revision and what is pending (exit 1 when something "
                                       "is). A store migrated by a newer e5studio is refused. `e5studio serve` "
                                       "migrates on start too.")
    store_sub = store.add_subparsers(dest="action", required=True)
    for action in ("migrate", "status"):
        _store_flags(store_sub.add_parser(action), "where the SQLite store lives (default ./.e5studio)")
    store.set_defaults(func=cmd_store)

    projects = sub.add_parser("projects", help="manage projects (through the server's admin API)")
    psub = projects.add_subparsers(dest="action", required=True)
    pc = psub.add_parser("create")
    pc.add_argument("name")
    pc.add_argument("--description", default="")
    psub.add_parser("list")
    for p in (pc, psub.choices["list"]):
        _add_admin_flags(p)
    projects.set_defaults(func=cmd_projects)

    endpoints = sub.add_parser("endpoints", help="manage endpoints (through the server's admin API)")
    esub = endpoints.add_subparsers(dest="action", required=True)
    ec = esub.add_parser("create", help="create an endpoint; prints its URL and key (shown once)")
    ec.add_argument("project")
    ec.add_argument("name")
    ec.add_argument("--model", default=None, help=f"hub id, alias or directory (default {DEFAULT_MODEL})")
    ec.add_argument("--batch-size", type=int, choices=[1, 32], default=32,
                    help="32 for vectorising a knowledge base, 1 for a live service; fixed at creation")
    ec.add_argument("--precision", choices=PRECISIONS, default=None,
                    help="fp32 or int8 (CPU: dense layers in int8); fixed at creation (default: the server's "
                         "--precision)")
    ec.add_argument("--description", default="")
    ec.add_argument("--input-type", choices=["query", "passage", "none"], default="none",
                    help="E5 prefix added by role where a request names none (\"input_type\" in the OpenAI body, "
                         "params.input_type in SambaStudio's) and a text lacks it (default none: texts as sent)")
    ec.add_argument("--force", action="store_true",
                    help="deploy a fine-tuned model even if it lost more than 0.01 nDCG@10 against its base model on "
                         "an out-of-domain evaluation set of its train job (the deploy gate; the choice is recorded)")
    el = esub.add_parser("list")
    el.add_argument("--project", default=None)
    parsers = [ec, el]
    for action in ("show", "delete", "rotate-key"):
        ep = esub.add_parser(action)
        ep.add_argument("project", help="project name or id")
        ep.add_argument("name", help="endpoint name or id")
        parsers.append(ep)
    for p in parsers:
        _add_admin_flags(p)
    endpoints.set_defaults(func=cmd_endpoints)

    add_models_parsers(sub)
    add_train_parsers(sub)
    add_batch_embed_parsers(sub)
    add_kb_parsers(sub)
    return parser


def set_process_threads(args: argparse.Namespace) -> None:
    """The process's CPU compute threads (``--threads``, else $E5STUDIO_THREADS), set once here for the whole
    process: library code reads the count, never sets it (only the engine's own worker threads have theirs)."""
    import os

    threads = getattr(args, "threads", None) or os.environ.get("E5STUDIO_THREADS")
    if not threads:
        return
    try:
        count = int(threads)
    except ValueError:
        raise InputError(f"threads must be a whole number, got {threads!r}") from None
    if count < 1:
        raise InputError(f"threads must be at least 1, got {count}")
    from e5studio.engine.device import set_threads

    set_threads(count)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        set_process_threads(args)
        return int(args.func(args))
    except StoreUnavailableError as exc:  # retryable (EX_TEMPFAIL): nothing was changed
        print(f"e5studio: error: {exc}", file=sys.stderr)
        return EXIT_RETRYABLE
    except E5StudioError as exc:
        print(f"e5studio: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
