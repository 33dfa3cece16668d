"""Typed, frozen settings, built once (from CLI flags) and passed down.

Nothing here reads the environment at import time; ``from_env`` is called explicitly by the CLI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "intfloat/e5-large-v2"


@dataclass(frozen=True)
class EngineSettings:
    """How the engine loads and runs a model.

    model: hub id, alias or local directory.
    device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    dtype: ``auto`` (fp32 on CPU, bf16 on CUDA where supported, else fp16), ``float32``, ``float16``, ``bfloat16``.
    threads: torch intra-op threads on CPU; ``None`` keeps torch's default (one per core).
    max_batch_tokens: token budget of one micro-batch (real tokens, no padding).
    max_length: truncation length including [CLS]/[SEP]; ``None`` uses the checkpoint's own maximum.
    cpu_runtime: on CPU in fp32, ``auto`` runs few-token micro-batches (single queries) on ONNX Runtime where
      it is installed and everything else on torch; ``torch`` uses torch only; ``onnxruntime`` is ``auto``
      that fails where ONNX Runtime is missing.
    precision: ``fp32`` (default) or ``int8``: every dense layer in int8 (weights per output channel, quantized at
      load from the fp32 checkpoint; activations per row at run time); CPU only.
    """

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    max_batch_tokens: int = 4096
    max_length: int | None = None
    cpu_runtime: str = "auto"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        from e5studio.errors import InputError
        from e5studio.vocabulary import CPU_RUNTIMES, PRECISIONS, one_of

        if self.cpu_runtime not in CPU_RUNTIMES:
            raise InputError(f"cpu_runtime must be {one_of(CPU_RUNTIMES)}, got {self.cpu_runtime!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be {one_of(PRECISIONS)}, got {self.precision!r}")

        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be at least 1, got {self.threads}")
        if self.max_batch_tokens < 1:
            raise InputError(f"max_batch_tokens must be at least 1, got {self.max_batch_tokens}")
        if self.max_length is not None and self.max_length < 2:
            raise InputError(f"max_length must be at least 2 ([CLS] and [SEP]), got {self.max_length}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> EngineSettings:
        """Settings from ``E5STUDIO_*`` variables, then explicit overrides (CLI flags) on top."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        if "E5STUDIO_MODEL" in env:
            values["model"] = env["E5STUDIO_MODEL"]
        if "E5STUDIO_DEVICE" in env:
            values["device"] = env["E5STUDIO_DEVICE"]
        if "E5STUDIO_DTYPE" in env:
            values["dtype"] = env["E5STUDIO_DTYPE"]
        if "E5STUDIO_THREADS" in env:
            values["threads"] = int(env["E5STUDIO_THREADS"])
        if "E5STUDIO_MAX_BATCH_TOKENS" in env:
            values["max_batch_tokens"] = int(env["E5STUDIO_MAX_BATCH_TOKENS"])
        if "E5STUDIO_CPU_RUNTIME" in env:
            values["cpu_runtime"] = env["E5STUDIO_CPU_RUNTIME"]
        if "E5STUDIO_PRECISION" in env:
            values["precision"] = env["E5STUDIO_PRECISION"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StoreTimeouts:
    """How long any call waits on the control store before it fails with StoreUnavailableError (HTTP 503 with
    Retry-After; the CLI's retryable exit status), so no request, heartbeat or job hangs on a store that is down.

    connect_s: opening a PostgreSQL connection (libpq's connect timeout: whole seconds).
    statement_s: one call's statements, pings and lock waits (PostgreSQL: the server's statement timeout and a
      watchdog on this side for a server that does not answer at all; SQLite: the busy timeout on its lock).
    checkout_s: waiting for a free connection of the pool.
    A call fails within checkout_s + connect_s + statement_s at most; a store known to be away fails at once.
    """

    connect_s: float = 2.0
    statement_s: float = 3.0
    checkout_s: float = 2.0

    ENV = {"connect_s": "E5STUDIO_STORE_CONNECT_TIMEOUT", "statement_s": "E5STUDIO_STORE_STATEMENT_TIMEOUT",
           "checkout_s": "E5STUDIO_STORE_CHECKOUT_TIMEOUT"}

    def __post_init__(self) -> None:
        from e5studio.errors import InputError

        for name in ("connect_s", "statement_s", "checkout_s"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                raise InputError(f"store timeout {name.removesuffix('_s')} must be above 0 and at most 3600 "
                                 f"seconds, got {value}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: float | None) -> StoreTimeouts:
        """From ``$E5STUDIO_STORE_*_TIMEOUT`` (seconds), then explicit overrides (CLI flags) on top."""
        from e5studio.errors import InputError

        env = os.environ if env is None else env
        values: dict[str, float] = {}
        for name, variable in cls.ENV.items():
            if env.get(variable):
                try:
                    values[name] = float(env[variable])
                except ValueError:
                    raise InputError(f"{variable} must be a number of seconds, got {env[variable]!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def as_env(self) -> dict[str, str]:
        """The variables that give a child process (a job) these timeouts."""
        return {variable: repr(getattr(self, name)) for name, variable in self.ENV.items()}


@dataclass(frozen=True)
class ServeSettings:
    """How ``e5studio serve`` runs.

    data_dir: where the control store (SQLite, unless ``store`` is given) and the job folders live.
    store: the control store's URL (``postgres://USER@HOST/DB``: replicas sharing it; a path or ``sqlite:///PATH``);
      None: the SQLite file ``e5studio.db`` in ``data_dir``.
    job_lease_s: how long a background job stays this server's without a renewal of its lease (a replica that
      dies loses its jobs this long after; any replica then marks them Interrupted).
    default_model: the model of the endpoint created when the store has none.
    max_queue: requests queued per loaded model before new ones get HTTP 429 (with Retry-After).
    max_queue_tokens: tokens queued per loaded model (estimated from characters before tokenising) before 429.
    max_queue_wait_s: expected wait (queued tokens at the measured tokens/s) before 429: load is shed well
      before clients time out (60 s is a common client timeout).
    body_timeout_s: a request body must arrive within this (plus 1 s per 64 KiB declared) or HTTP 408.
    max_body_bytes: request-body limit (HTTP 413 above it).
    max_upload_bytes: limit of a dataset upload in the web UI (both files together).
    public_url: base URL printed for endpoints (default http://HOST:PORT).
    forwarded_allow_ips: the proxies whose X-Forwarded-For/-Proto headers are trusted (comma-separated addresses
      or networks, ``*`` for any); empty: none, the client is the socket's peer (a spoofed header changes
      nothing: not the login throttle, not the access log).
    cookie_secure: the web session cookie carries ``Secure`` (sent over HTTPS only); None: when ``public_url``
      is an https URL (the server is told it runs behind TLS).
    store_timeouts: the bounds on every call to the control store (:class:`StoreTimeouts`).
    """

    data_dir: Path = Path(".e5studio")
    host: str = "127.0.0.1"
    port: int = 8000
    default_model: str = DEFAULT_MODEL
    engine: EngineSettings = EngineSettings()
    max_queue: int = 256
    max_queue_tokens: int = 256 * 1024
    max_queue_wait_s: float = 10.0
    body_timeout_s: float = 30.0
    max_body_bytes: int = 8 * 1024 * 1024
    max_upload_bytes: int = 1024 * 1024 * 1024
    public_url: str | None = None
    store: str | None = None
    job_lease_s: float = 30.0
    forwarded_allow_ips: str = ""
    cookie_secure: bool | None = None
    store_timeouts: StoreTimeouts = StoreTimeouts()

    @property
    def secure_cookies(self) -> bool:
        if self.cookie_secure is not None:
            return self.cookie_secure
        return bool(self.public_url and self.public_url.lower().startswith("https://"))

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"
