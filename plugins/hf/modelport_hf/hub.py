"""Hugging Face Hub repositories as a :class:`~modelport.types.Source`.

A reference shaped like a Hub repository id (``name`` or ``org/name``) that
is not a local path becomes a :class:`HubSource`. Every later step reads files
through it (``list_files``, ``exists``, ``fetch``, ``fetch_many``), so config,
tokenizer and weight selection work for Hub ids unchanged, and only the files
a step actually fetches are downloaded: ``config.json`` while parsing, the
tokenizer files when the tokenizer is built, the weight files the load format
chose when they are streamed. Selecting weights needs only the listing (and the
shard index, if any), so ``resolve()`` downloads no weights.

How a source is built (once per reference per resolve):

* **Pin.** A branch or tag is pinned to its commit once, so config, tokenizer
  and weights all come from that commit (``source.revision``). Online the Hub's
  revision endpoint answers (``GET /api/models/{id}/revision/{rev}``, one
  request that also lists the files); a commit id needs no request. When the
  Hub cannot be reached online, the commit recorded in the cache
  (``refs/{rev}``) is used and the trace says so. Offline only the cache is read.
* **List.** The listing at that commit comes from the same request, else from
  the listing cached by ``huggingface_hub`` (``trees/{commit}.json`` in the repo
  folder of the cache, which this module also writes), else, offline, from the
  cached snapshot folder, in which case a file that is not there is reported as
  not cached rather than as absent (whether the repository has it is unknown).
* **Fetch.** A file already in the snapshot folder is returned without any
  request. Otherwise ``huggingface_hub.hf_hub_download`` fetches it at the
  pinned commit, so the cache layout is the library's own.

Cache: the standard Hugging Face cache, read from the environment on each
call (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``),
or ``download_dir``, which replaces the cache folder with the same layout (as
vLLM's ``download_dir`` does). Endpoint: ``HF_ENDPOINT`` read on each call
(default ``https://huggingface.co``), passed to every call explicitly.

Concurrency and atomicity come from ``huggingface_hub`` (2.x) and live with
the cache, never in a folder shared with other users: each blob is downloaded
under a file lock at ``{cache}/.locks/models--{org}--{name}/{etag}.lock`` into a
process-unique ``{blob}.{random}.incomplete`` file that is renamed into place
when complete, so processes loading one model at once download each file once
and never read a partial file. A transfer dropped midway is resumed by the
library with a ``Range`` request within the same download (up to five times
with no progress); a download that fails anyway leaves nothing behind, and the
next attempt starts from zero (the library no longer keeps partial files
across calls).

Offline (``offline=True`` or ``HF_HUB_OFFLINE=1``) makes no network call at
all: the pin, the listing and every file come from the cache, and a miss
raises :class:`~modelport.errors.OfflineMissError` naming the files that are
not cached. Nothing that could not be asked is ever reported as absent.

Progress bars are shown when stderr is a terminal and never otherwise (decided
per call, with no change to ``huggingface_hub``'s global settings). The token
(the ``token`` option, else ``HF_TOKEN`` or the stored login, read by
``huggingface_hub``) is sent to the endpoint only and never appears in a
message, the trace, ``describe()`` or ``repr``.

This module imports no heavy library: ``huggingface_hub`` is imported inside
the methods that need it.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from modelport.errors import (
    AccessDeniedError,
    DownloadError,
    InvalidOptionError,
    ModelportError,
    OfflineMissError,
    ReferenceNotFoundError,
)
from modelport.options import LoadOptions
from modelport.types import Source

#: The public Hub, used when ``HF_ENDPOINT`` is not set.
DEFAULT_ENDPOINT = "https://huggingface.co"
#: Seconds to wait for the Hub's API before treating it as unreachable.
API_TIMEOUT = 10.0

_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
#: The shape of a Hub repository id (``name`` or ``org/name``), as ``huggingface_hub`` validates it.
REPO_ID_PATTERN = re.compile(rf"^(?:{_NAME}/)?{_NAME}$")
COMMIT_PATTERN = re.compile(r"^[0-9a-f]{40}$")


def looks_like_repo_id(reference: str) -> bool:
    """Whether ``reference`` has the shape of a Hub model id (``name`` or ``org/name``).

    Names of single files that other plugins read (``*.gguf``) are not claimed.
    """
    return (
        REPO_ID_PATTERN.match(reference) is not None
        and "--" not in reference
        and ".." not in reference
        and not reference.endswith((".git", ".gguf"))
    )


def hub_endpoint() -> str:
    """The Hub endpoint: ``HF_ENDPOINT`` as set now, else the public Hub."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, from the environment as set now."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        home = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def repo_folder_name(repo_id: str) -> str:
    """The folder of a model repository in the cache (``models--org--name``)."""
    return "--".join(["models", *repo_id.split("/")])


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class _NoProgress:
    """A progress bar that draws nothing, for output that is not a terminal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.n = kwargs.get("initial") or 0
        self.total = kwargs.get("total")

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float | None = 1) -> None:
        self.n += n or 0

    def __getattr__(self, name: str) -> Any:
        # close, refresh, set_postfix_str, update_transfer...: whatever the library calls does nothing.
        return _noop


def progress_bar_class() -> type | None:
    """The ``tqdm_class`` for one download: the library's bars on a terminal, none otherwise."""
    return None if _stderr_is_terminal() else _NoProgress


def _siblings_listing(siblings: Iterable[Any]) -> dict[str, dict[str, Any]]:
    listing: dict[str, dict[str, Any]] = {}
    for sibling in siblings:
        lfs = getattr(sibling, "lfs", None)
        listing[sibling.rfilename] = {
            "size": getattr(sibling, "size", None),
            "blob_id": getattr(sibling, "blob_id", None),
            "lfs_sha256": getattr(lfs, "sha256", None),
            "lfs_size": getattr(lfs, "size", None),
        }
    return listing


class HubSource(Source):
    """A model repository on the Hugging Face Hub (or an ``HF_ENDPOINT`` that speaks its API).

    Attributes:
        repo_id: ``name`` or ``org/name``.
        requested_revision: the branch, tag or commit asked for (``main`` by default).
        revision: the commit every file comes from.
        pinned_by: how the commit was found (for the trace).
        listed_by: where the file listing came from (for the trace).
        endpoint: the Hub endpoint.
        cache_dir: the cache folder (``download_dir`` when given).
        offline: whether no network call may be made.
        code_revision: the revision remote code is taken from, if not ``revision``.
    """

    kind = "hf"

    def __init__(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        endpoint: str | None = None,
        offline: bool = False,
        code_revision: str | None = None,
    ) -> None:
        """Pin ``revision`` of ``repo_id`` to a commit and list its files.

        Raises:
            ReferenceNotFoundError: no such repository, revision (or a private
                repository the token does not open).
            AccessDeniedError: the token was refused.
            OfflineMissError: offline, and the revision or its listing is not cached.
            DownloadError: the Hub could not be reached and nothing is cached.
        """
        self.repo_id = repo_id
        self.reference = repo_id
        self.requested_revision = revision or "main"
        if not _is_relative(self.requested_revision):
            raise InvalidOptionError("revision", revision, detail="expected a branch, tag or commit name")
        self._token = token
        self.endpoint = (endpoint or hub_endpoint()).rstrip("/")
        self.cache_dir = Path(cache_dir if cache_dir is not None else hub_cache_dir()).expanduser().resolve()
        self.offline = offline
        self.code_revision = code_revision
        self.storage = self.cache_dir / repo_folder_name(repo_id)
        self._code_source: HubSource | None = None
        self._partial_listing = False
        self._unreachable: DownloadError | None = None
        self.listed_by = ""
        self.revision, self.pinned_by, listing = self._pin()
        self._files = self._list(listing)
        self._file_set = frozenset(self._files)

    @classmethod
    def from_options(cls, repo_id: str, options: LoadOptions) -> HubSource:
        """The source for ``repo_id`` as ``options`` ask (revision, token, download_dir, offline, code_revision)."""
        return cls(
            repo_id,
            revision=options.revision,
            token=options.token,
            cache_dir=options.download_dir,
            offline=options.is_offline,
            code_revision=options.code_revision,
        )

    # --- Source API ------------------------------------------------------------

    @property
    def location(self) -> str:
        """``hf:org/name@commit`` (marked when only the cached files are known, so messages say why)."""
        where = f"hf:{self.repo_id}@{self.revision}"
        return (
            f"{where} (cached files only: no listing of this commit in the cache)" if self._partial_listing else where
        )

    @property
    def snapshot_dir(self) -> Path:
        """The cache folder holding this commit's files (``.../snapshots/{commit}``)."""
        return self.storage / "snapshots" / str(self.revision)

    def list_files(self) -> list[str]:
        """Every file of the repository at the pinned commit (offline without a cached listing: the cached ones)."""
        return list(self._files)

    @property
    def listing_complete(self) -> bool:
        """Whether :meth:`list_files` is the whole repository (``False``: only the files in the cache are known)."""
        return not self._partial_listing

    def exists(self, path: str) -> bool:
        """Whether the repository has ``path`` at the pinned commit (no request: the listing is in hand)."""
        return path in self._file_set

    def fetch(self, path: str) -> Path:
        """The local path of ``path`` at the pinned commit, downloading it if it is not cached.

        Raises:
            ReferenceNotFoundError: the repository has no such file.
            OfflineMissError: offline, and the file is not cached.
            AccessDeniedError: a gated or private repository refused the token.
            DownloadError: the transfer failed (nothing partial is left in the cache).
        """
        return self.fetch_many([path])[path]

    def fetch_many(self, paths: Iterable[str]) -> dict[str, Path]:
        """Materialise several files; offline, one error lists every file that is not cached."""
        wanted = list(dict.fromkeys(paths))
        found: dict[str, Path] = {}
        missing: list[str] = []
        for path in wanted:
            if not _is_relative(path) or (path not in self._file_set and not self._partial_listing):
                raise ReferenceNotFoundError(self.repo_id, f"no file {path!r} in {self.location}")
            local = self.snapshot_dir / path
            if local.is_file():
                found[path] = self._inside_cache(path, local)
            else:
                missing.append(path)
        if missing and self.offline:
            raise OfflineMissError(self.repo_id, missing, self._offline_detail())
        for path in missing:
            found[path] = self._download(path)
        return {path: found[path] for path in wanted}

    def _inside_cache(self, path: str, local: Path) -> Path:
        """``local`` if it resolves into this commit's snapshot or the repository's blobs (the cache's own links)."""
        from modelport.containment import refusal

        real = local.resolve()
        if not any(real.is_relative_to(root.resolve()) for root in (self.snapshot_dir, self.storage / "blobs")):
            raise refusal(
                str(self.snapshot_dir),
                path,
                f"is a link leading outside the cache's snapshot and blobs (to {real}); it is not read",
            )
        return local

    def describe(self) -> dict[str, Any]:
        """Kind, location and commit, plus how they were found; never the token."""
        out = super().describe()
        out.update(
            repo_id=self.repo_id,
            requested_revision=self.requested_revision,
            pinned_by=self.pinned_by,
            listed_by=self.listed_by,
            endpoint=self.endpoint,
            cache_dir=str(self.cache_dir),
            offline=self.offline,
        )
        return out

    def code_source(self) -> HubSource:
        """The source remote code comes from: this one, or the repository pinned at ``code_revision``."""
        if self.code_revision is None or self.code_revision in (self.requested_revision, self.revision):
            return self
        if self._code_source is None:
            self._code_source = HubSource(
                self.repo_id,
                revision=self.code_revision,
                token=self._token,
                cache_dir=self.cache_dir,
                endpoint=self.endpoint,
                offline=self.offline,
            )
        return self._code_source

    # --- pin and list ------------------------------------------------------------

    def _pin(self) -> tuple[str, str, dict[str, dict[str, Any]] | None]:
        requested = self.requested_revision
        if COMMIT_PATTERN.match(requested):
            return requested, "a commit id: nothing to resolve", None
        ref = self.storage / "refs" / requested
        if self.offline:
            commit = self._read_ref(ref)
            if commit is None:
                raise OfflineMissError(
                    self.repo_id,
                    [],
                    f"revision {requested!r} was never fetched into the cache {self.cache_dir} (no {ref}); "
                    "run once online or pass revision=<commit> of a cached snapshot",
                )
            return commit, f"offline: {requested!r} is commit {commit[:12]} in the cache (refs/{requested})", None
        try:
            info = self._model_info(requested)
        except Exception as exc:
            translated = self._translate(exc, None)
            if translated is None:
                raise
            commit = self._read_ref(ref) if isinstance(translated, DownloadError) else None
            if commit is None:
                raise translated from exc
            # As huggingface_hub does: an unreachable Hub falls back on the commit the cache recorded.
            self._unreachable = translated
            return commit, f"the Hub could not be reached; {requested!r} is commit {commit[:12]} in the cache", None
        commit = str(info.sha)
        self._write_ref(ref, commit)
        listing = _siblings_listing(info.siblings) if info.siblings is not None else None
        return commit, f"{requested!r} is commit {commit[:12]} on {self.endpoint}", listing

    def _list(self, listing: dict[str, dict[str, Any]] | None) -> list[str]:
        if listing is not None:
            self.listed_by = "the Hub's revision endpoint"
            self._write_tree_cache(listing)
            return sorted(listing)
        cached = self._read_tree_cache()
        if cached is not None:
            self.listed_by = f"the listing cached for commit {self.revision[:12]}"
            return cached
        if self.offline:
            if not self.snapshot_dir.is_dir():
                raise OfflineMissError(
                    self.repo_id, [], f"nothing of commit {self.revision} is cached in {self.cache_dir}"
                )
            return self._snapshot_listing("offline")
        if self._unreachable is not None and self.snapshot_dir.is_dir():
            return self._snapshot_listing("the Hub could not be reached")
        try:
            info = self._model_info(self.revision)
        except Exception as exc:
            translated = self._translate(exc, None)
            if translated is None:
                raise
            if isinstance(translated, DownloadError) and self.snapshot_dir.is_dir():
                self._unreachable = translated
                return self._snapshot_listing("the Hub could not be reached")
            raise translated from exc
        listing = _siblings_listing(info.siblings or [])
        self.listed_by = "the Hub's revision endpoint"
        self._write_tree_cache(listing)
        return sorted(listing)

    def _snapshot_listing(self, why: str) -> list[str]:
        # Only what is cached is known: a file not listed here is "not cached", never "absent".
        self._partial_listing = True
        self.listed_by = f"{why}: the cached snapshot folder (no cached listing; files not cached are unknown)"
        return sorted(p.relative_to(self.snapshot_dir).as_posix() for p in self.snapshot_dir.rglob("*") if p.is_file())

    def _model_info(self, revision: str) -> Any:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, library_name="modelport")
        return api.model_info(
            self.repo_id, revision=revision, files_metadata=True, timeout=API_TIMEOUT, token=self._token
        )

    @staticmethod
    def _read_ref(ref: Path) -> str | None:
        try:
            commit = ref.read_text().strip()
        except OSError:
            return None
        return commit if COMMIT_PATTERN.match(commit) else None

    @staticmethod
    def _write_ref(ref: Path, commit: str) -> None:
        # Same file and format as huggingface_hub's refs; written atomically, best effort (read-only caches).
        try:
            if ref.is_file() and ref.read_text().strip() == commit:
                return
            ref.parent.mkdir(parents=True, exist_ok=True)
            tmp = ref.with_name(f"{ref.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(commit)
            os.replace(tmp, ref)
        except OSError:
            pass

    def _read_tree_cache(self) -> list[str] | None:
        try:
            from huggingface_hub import get_cached_repo_tree
            from huggingface_hub.errors import CachedRepoTreeNotFoundError
        except ImportError:
            return None
        try:
            files = get_cached_repo_tree(self.repo_id, revision=self.revision, cache_dir=str(self.cache_dir))
        except (CachedRepoTreeNotFoundError, OSError, ValueError):
            return None
        return sorted(f.path for f in files)

    def _write_tree_cache(self, listing: dict[str, dict[str, Any]]) -> None:
        # The listing huggingface_hub itself caches per commit (snapshot_download writes and reads it), so
        # offline loads know which files exist even when only some are cached. Skipped if the metadata is
        # incomplete or the library's (private) writer moved.
        if not listing or any(v["size"] is None or v["blob_id"] is None for v in listing.values()):
            return
        try:
            from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache
        except ImportError:
            return
        entries = {
            path: TreeCacheEntry(
                size=int(v["size"]), blob_id=str(v["blob_id"]), lfs_sha256=v["lfs_sha256"], lfs_size=v["lfs_size"]
            )
            for path, v in listing.items()
        }
        write_tree_cache(str(self.storage), str(self.revision), entries)

    # --- download -----------------------------------------------------------------

    def _download(self, path: str) -> Path:
        from huggingface_hub import hf_hub_download

        try:
            local = hf_hub_download(
                self.repo_id,
                path,
                revision=self.revision,
                cache_dir=str(self.cache_dir),
                token=self._token,
                endpoint=self.endpoint,
                library_name="modelport",
                tqdm_class=progress_bar_class(),
            )
        except Exception as exc:
            translated = self._translate(exc, path)
            if translated is None:
                raise
            raise translated from exc
        return Path(local)

    # --- errors -------------------------------------------------------------------

    def _offline_detail(self) -> str:
        how = "HF_HUB_OFFLINE=1" if os.environ.get("HF_HUB_OFFLINE") else "offline=True"
        detail = f"commit {self.revision} in {self.cache_dir} ({how}; no network call was made)"
        if self._partial_listing:
            detail += "; the cache holds no listing of this commit, so whether the repository has them is unknown"
        return detail

    def _token_note(self) -> str:
        if isinstance(self._token, str):
            return "the token given (token option) does not grant access"
        if self._token is False:
            return "no token was sent (token=False)"
        if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
            return "the token from HF_TOKEN does not grant access"
        return "no token was given (pass token=... or set HF_TOKEN)"

    def _scrub(self, text: str) -> str:
        for secret in (self._token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")):
            if isinstance(secret, str) and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def _translate(self, exc: BaseException, path: str | None) -> ModelportError | None:
        """The modelport error for a ``huggingface_hub`` (or transport) failure; ``None`` if it is not one."""
        from huggingface_hub import errors as hf_errors

        where = f"{self.endpoint}/{self.repo_id}"
        if isinstance(exc, hf_errors.GatedRepoError):
            return AccessDeniedError(
                self.repo_id,
                f"it is a gated repository and {self._token_note()}; ask for access at {where}",
            )
        if isinstance(exc, hf_errors.RepositoryNotFoundError):
            return ReferenceNotFoundError(
                self.repo_id,
                f"not a local path, and no such repository on {self.endpoint}, "
                f"or it is private and {self._token_note()}",
            )
        if isinstance(exc, hf_errors.RevisionNotFoundError):
            return ReferenceNotFoundError(
                self.repo_id, f"the repository has no revision {self.requested_revision!r} on {self.endpoint}"
            )
        if isinstance(exc, hf_errors.RemoteEntryNotFoundError):
            return ReferenceNotFoundError(self.repo_id, f"no file {path!r} in {self.location}")
        if isinstance(exc, hf_errors.OfflineModeIsEnabled):
            return OfflineMissError(
                self.repo_id,
                [path] if path else [],
                "huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported)",
            )
        if isinstance(exc, hf_errors.HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                return AccessDeniedError(self.repo_id, f"the Hub answered HTTP {status}: {self._token_note()}")
            return DownloadError(self.repo_id, path, f"{where} answered HTTP {status}")
        if isinstance(exc, hf_errors.LocalEntryNotFoundError):
            cause = exc.__cause__ or exc.__context__
            reason = f" ({self._scrub(_first_line(cause))})" if cause is not None else ""
            return DownloadError(
                self.repo_id, path, f"{self.endpoint} could not be reached{reason} and it is not cached"
            )
        if _is_transport_error(exc):
            return DownloadError(
                self.repo_id, path, f"{self.endpoint} could not be reached ({self._scrub(_first_line(exc))})"
            )
        if isinstance(exc, OSError):  # the library's size check of a finished transfer, a full disk...
            return DownloadError(self.repo_id, path, self._scrub(_first_line(exc)))
        return None


def _is_relative(path: str) -> bool:
    # Revisions and file names become paths in the cache: never absolute, never climbing out of it.
    parts = path.replace("\\", "/").split("/")
    return bool(path) and not path.startswith("/") and ".." not in parts and "" not in parts


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _is_transport_error(exc: BaseException) -> bool:
    # huggingface_hub 2.x talks HTTP through httpx2; older releases through httpx. Either may be installed.
    for module in ("httpx2", "httpx"):
        mod = sys.modules.get(module)
        error = getattr(mod, "HTTPError", None) if mod is not None else None
        if isinstance(error, type) and isinstance(exc, error):
            return True
    return False


__all__ = [
    "API_TIMEOUT",
    "DEFAULT_ENDPOINT",
    "REPO_ID_PATTERN",
    "HubSource",
    "hub_cache_dir",
    "hub_endpoint",
    "looks_like_repo_id",
    "progress_bar_class",
    "repo_folder_name",
]
