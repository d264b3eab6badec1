"""ModelScope repositories as a :class:`~modelport.types.Source`, through the real ``modelscope`` client.

A reference shaped like a ModelScope id (``owner/name``) becomes a
:class:`ModelScopeSource` when the effective hub is ``modelscope`` (the ``hub``
option, or ``MODELPORT_USE_MODELSCOPE`` / ``VLLM_USE_MODELSCOPE``). Every later
step reads files through it, so config, tokenizer and weight selection work
unchanged, and only the files a step fetches are downloaded.

How a source is built (once per reference per resolve):

* **Revision.** ModelScope revisions are branch and tag names (``master`` by
  default); the client stores each revision's files in a folder named after it,
  so the source keeps the name (``source.revision``) and every file comes from it.
* **List.** Online, one request lists the files at that revision
  (``HubApi.get_model_files``, ``GET /api/v1/models/{id}/repo/files``); the listing is
  saved next to the cache (``{cache}/.modelport-listings/models--{owner}--{name}/{revision}.json``)
  so that offline loads know which files exist. Offline, that saved listing is
  read, else the files in the cached folder (a file not there is then "not
  cached", never "absent").
* **Fetch.** A file already in the cached folder is returned with no request.
  Otherwise ``modelscope.hub.file_download.model_file_download`` fetches it into
  that folder, under the client's own file lock
  (``{cache}/.lock/file_{sha256}.lock``) and through its ``.incomplete`` file, so
  concurrent loads download each file once and never read a partial file.

Cache: ``download_dir``, else ``MODELSCOPE_CACHE``, else ``~/.cache/modelscope``,
read on each call, in the client's layout: ``{cache}/models/{owner}--{name}/snapshots/{revision}/``.
A folder that an older client (up to 1.37) wrote, ``{cache}/models/{owner}/{name}``
with every ``.`` of the name written as ``___`` (``Qwen2___5-0___5B``; also under
``hub/`` or without ``models/``), is used instead when no snapshot folder holds the
revision and its ``.mv`` file names the revision asked for (or none was asked for).
Its hidden ``.mdl``/``.msc`` files are pickles and are never read.

Endpoint (``MODELSCOPE_ENDPOINT``, default ``https://www.modelscope.cn``), token
(the ``token`` option, else ``MODELSCOPE_API_TOKEN``) and cache are read from the
environment on each call and passed to every client call explicitly: the
client's own process-wide configuration reads the environment once, and nothing
global of ``modelscope``, ``huggingface_hub`` or transformers is changed. The
token is sent to the endpoint only and never appears in a message, the trace,
``describe()`` or ``repr``.

Offline (``offline=True`` or ``HF_HUB_OFFLINE=1``) makes no network call: a miss
raises :class:`~modelport.errors.OfflineMissError` naming every file not cached.

``modelscope`` is imported inside the methods that need it.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

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

#: ModelScope itself, used when ``MODELSCOPE_ENDPOINT`` is not set.
DEFAULT_ENDPOINT = "https://www.modelscope.cn"
#: ModelScope's default branch.
DEFAULT_REVISION = "master"
#: Hidden files a ModelScope download leaves in a model folder (pickled cache index, model id; revision).
METADATA_FILES = (".mdl", ".msc", ".mv")

_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,126}[A-Za-z0-9_])?"
#: The shape of a ModelScope model id: always ``owner/name``.
MODEL_ID_PATTERN = re.compile(rf"^{_PART}/{_PART}$")


def looks_like_model_id(reference: str) -> bool:
    """Whether ``reference`` has the shape of a ModelScope model id (``owner/name``); ``.gguf`` names are not."""
    return MODEL_ID_PATTERN.match(reference) is not None and ".." not in reference and not reference.endswith(".gguf")


def modelscope_endpoint() -> str:
    """The ModelScope endpoint: ``MODELSCOPE_ENDPOINT`` as set now, else ModelScope itself."""
    return (os.environ.get("MODELSCOPE_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def modelscope_cache_dir() -> Path:
    """ModelScope's cache folder as the environment says now (``MODELSCOPE_CACHE``, else ``~/.cache/modelscope``)."""
    explicit = os.environ.get("MODELSCOPE_CACHE")
    return Path(os.path.expandvars(explicit)).expanduser() if explicit else Path.home() / ".cache" / "modelscope"


def escaped_name(name: str) -> str:
    """A model name as ModelScope's older cache folders spell it: every ``.`` as ``___``."""
    return name.replace(".", "___")


def snapshot_folder(cache_dir: Path, repo_id: str, revision: str) -> Path:
    """Where the client keeps ``revision`` of ``repo_id``: ``{cache}/models/{owner}--{name}/snapshots/{revision}``."""
    return cache_dir / "models" / repo_id.replace("/", "--") / "snapshots" / revision


def legacy_folders(cache_dir: Path, repo_id: str) -> list[Path]:
    """The folders older ModelScope clients kept ``repo_id`` in, in the order the client looks."""
    owner, name = repo_id.split("/", 1)
    safe = escaped_name(name)
    return [
        cache_dir / "models" / owner / safe,
        cache_dir / "hub" / "models" / owner / safe,
        cache_dir / owner / safe,
        cache_dir / owner / name,
        cache_dir / "hub" / owner / safe,
        cache_dir / "hub" / owner / name,
        cache_dir / "models" / owner / name,
    ]


def folder_revision(folder: Path) -> str | None:
    """The revision a ModelScope-downloaded folder holds, from its ``.mv`` file (``Revision:v1,CreatedAt:...``)."""
    try:
        text = (folder / ".mv").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if text.startswith("Revision:"):
        text = text[len("Revision:") :].split(",", 1)[0]
    return text or None


def _visible_files(folder: Path) -> list[str]:
    # Hidden files and folders (.mdl, .msc, .mv, .lock...) and unfinished downloads are not the model's files.
    out = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and not any(p.startswith(".") for p in rel.parts) and not path.name.endswith(".incomplete"):
            out.append(rel.as_posix())
    return sorted(out)


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(True for _ in _visible_files(folder))


class ModelScopeSource(Source):
    """A model repository on ModelScope (or a ``MODELSCOPE_ENDPOINT`` that speaks its API).

    Attributes:
        repo_id: ``owner/name``.
        revision: the branch or tag every file comes from (``master`` by default).
        requested_revision: the revision asked for (``None``: the default branch).
        endpoint: the ModelScope endpoint.
        cache_dir: the cache folder (``download_dir`` when given).
        folder: the folder holding this revision's files (a snapshot folder, or an older client's folder).
        layout: ``snapshots`` or ``legacy`` (an older client's folder).
        listed_by: where the file listing came from (for the trace).
        offline: whether no network call may be made.
    """

    kind = "modelscope"

    def __init__(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        endpoint: str | None = None,
        offline: bool = False,
    ) -> None:
        """List the files of ``repo_id`` at ``revision`` (online, one request; offline, from the cache).

        Raises:
            ReferenceNotFoundError: no such model or revision (or a private model the token does not open).
            AccessDeniedError: the token was refused.
            OfflineMissError: offline, and nothing of this revision is cached.
            DownloadError: ModelScope could not be reached and nothing is cached.
        """
        self.repo_id = repo_id
        self.reference = repo_id
        self.requested_revision = revision
        self.revision = revision or DEFAULT_REVISION
        if not _is_relative(self.revision):
            raise InvalidOptionError("revision", revision, detail="expected a branch or tag name")
        self._token = token
        self.endpoint = (endpoint or modelscope_endpoint()).rstrip("/")
        self.cache_dir = Path(cache_dir if cache_dir is not None else modelscope_cache_dir()).expanduser().resolve()
        self.offline = offline
        self.folder, self.layout = self._choose_folder()
        self._partial_listing = False
        self.listed_by = ""
        self._files = self._list()
        self._file_set = frozenset(self._files)

    @classmethod
    def from_options(cls, repo_id: str, options: LoadOptions) -> ModelScopeSource:
        """The source for ``repo_id`` as ``options`` ask (revision, token, download_dir, offline)."""
        return cls(
            repo_id,
            revision=options.revision,
            token=options.token,
            cache_dir=options.download_dir,
            offline=options.is_offline,
        )

    # --- Source API ------------------------------------------------------------

    @property
    def location(self) -> str:
        """``modelscope:owner/name@revision`` (marked when only the cached files are known)."""
        where = f"modelscope:{self.repo_id}@{self.revision}"
        return f"{where} (cached files only: no saved listing of this revision)" if self._partial_listing else where

    def list_files(self) -> list[str]:
        """Every file of the model at the revision (offline without a saved listing: the cached ones)."""
        return list(self._files)

    def exists(self, path: str) -> bool:
        """Whether the model has ``path`` at the revision (no request: the listing is in hand)."""
        return path in self._file_set

    def fetch(self, path: str) -> Path:
        """The local path of ``path``, downloading it if it is not cached (see :meth:`fetch_many`)."""
        return self.fetch_many([path])[path]

    def fetch_many(self, paths: Iterable[str]) -> dict[str, Path]:
        """Materialise several files; offline, one error lists every file that is not cached.

        Raises:
            ReferenceNotFoundError: the model has no such file.
            OfflineMissError: offline, and files are not cached.
            AccessDeniedError: a private model refused the token.
            DownloadError: the transfer failed (the client leaves nothing partial in place).
        """
        wanted = list(dict.fromkeys(paths))
        found: dict[str, Path] = {}
        missing: list[str] = []
        for path in wanted:
            if not _is_relative(path) or (path not in self._file_set and not self._partial_listing):
                raise ReferenceNotFoundError(self.repo_id, f"no file {path!r} in {self.location}")
            local = self.folder / path
            if local.is_file():
                found[path] = local
            else:
                missing.append(path)
        if missing and self.offline:
            raise OfflineMissError(self.repo_id, missing, self._offline_detail())
        for path in missing:
            found[path] = self._download(path)
        return {path: found[path] for path in wanted}

    def describe(self) -> dict[str, Any]:
        """Kind, location and revision, plus where the files are and how they were listed; never the token."""
        out = super().describe()
        out.update(
            repo_id=self.repo_id,
            requested_revision=self.requested_revision,
            listed_by=self.listed_by,
            endpoint=self.endpoint,
            cache_dir=str(self.cache_dir),
            folder=str(self.folder),
            layout=self.layout,
            offline=self.offline,
        )
        return out

    # --- cache layout ------------------------------------------------------------

    def _choose_folder(self) -> tuple[Path, str]:
        snapshot = snapshot_folder(self.cache_dir, self.repo_id, self.revision)
        if _has_files(snapshot):
            return snapshot, "snapshots"
        for folder in legacy_folders(self.cache_dir, self.repo_id):
            if not _has_files(folder):
                continue
            held = folder_revision(folder)
            if held == self.revision or (held is None and self.requested_revision is None):
                return folder, "legacy"
        return snapshot, "snapshots"

    @property
    def listing_file(self) -> Path:
        """Where the listing of this revision is saved for offline use."""
        name = "models--" + self.repo_id.replace("/", "--")
        return self.cache_dir / ".modelport-listings" / name / f"{quote(self.revision, safe='')}.json"

    def _read_listing(self) -> list[str] | None:
        try:
            data = json.loads(self.listing_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            return None
        return sorted(files)

    def _write_listing(self, files: list[str]) -> None:
        # Atomic and best effort: a read-only cache only costs offline loads their listing.
        try:
            self.listing_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.listing_file.with_name(f"{self.listing_file.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(json.dumps({"repo_id": self.repo_id, "revision": self.revision, "files": files}))
            os.replace(tmp, self.listing_file)
        except OSError:
            pass

    # --- list --------------------------------------------------------------------

    def _list(self) -> list[str]:
        if self.offline:
            return self._cached_listing("offline", None)
        try:
            entries = self._api().get_model_files(self.repo_id, revision=self.revision, recursive=True)
        except Exception as exc:
            translated = self._translate(exc, None)
            if translated is None:
                raise
            if isinstance(translated, ReferenceNotFoundError):
                translated = self._not_found(translated)
            if isinstance(translated, DownloadError):
                return self._cached_listing("ModelScope could not be reached", translated)
            raise translated from exc
        files = _file_paths(entries)
        self.listed_by = "ModelScope's file listing"
        self._write_listing(files)
        return files

    def _cached_listing(self, why: str, unreachable: DownloadError | None) -> list[str]:
        saved = self._read_listing()
        if saved is not None:
            self.listed_by = f"{why}: the listing saved when it was last listed online ({self.listing_file})"
            return saved
        if _has_files(self.folder):
            # Only what is cached is known: a file not listed here is "not cached", never "absent".
            self._partial_listing = True
            self.listed_by = f"{why}: the files in the cached folder {self.folder} (no saved listing)"
            return _visible_files(self.folder)
        if unreachable is not None:
            raise unreachable
        raise OfflineMissError(
            self.repo_id,
            [],
            f"revision {self.revision!r} was never fetched into the cache {self.cache_dir} "
            f"(no {self.folder}); run once online",
        )

    def _not_found(self, error: ReferenceNotFoundError) -> ModelportError:
        # A 404 on the listing is a missing model or a missing revision: the revisions endpoint tells which.
        try:
            branches, tags = self._api().get_model_branches_and_tags(self.repo_id)
        except Exception:
            return error
        names = sorted({*branches, *tags})
        return ReferenceNotFoundError(
            self.repo_id,
            f"the model has no revision {self.revision!r} on {self.endpoint}; "
            f"its branches and tags: {', '.join(repr(n) for n in names) or '(none)'}",
        )

    # --- the client ----------------------------------------------------------------

    def _client_token(self) -> str | None:
        # Explicit every time: the client's process-wide configuration read the environment once.
        if isinstance(self._token, str):
            return self._token
        if self._token is False:
            return ""
        return os.environ.get("MODELSCOPE_API_TOKEN")

    def _api(self) -> Any:
        from modelscope.hub.api import HubApi

        return HubApi(endpoint=self.endpoint, token=self._client_token())

    def _download(self, path: str) -> Path:
        from modelscope.hub.file_download import model_file_download

        try:
            local = model_file_download(
                self.repo_id,
                path,
                revision=self.revision,
                cache_dir=str(self.cache_dir),
                local_dir=str(self.folder),
                token=self._client_token(),
                endpoint=self.endpoint,
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
        detail = f"revision {self.revision} in {self.folder} ({how}; no network call was made)"
        if self._partial_listing:
            detail += "; no listing of this revision was saved, so whether the model has them is unknown"
        return detail

    def _token_note(self) -> str:
        if isinstance(self._token, str):
            return "the token given (token option) does not grant access"
        if self._token is False:
            return "no token was sent (token=False)"
        if os.environ.get("MODELSCOPE_API_TOKEN"):
            return "the token from MODELSCOPE_API_TOKEN does not grant access"
        return "no token was given (pass token=... or set MODELSCOPE_API_TOKEN)"

    def _scrub(self, text: str) -> str:
        for secret in (self._token, os.environ.get("MODELSCOPE_API_TOKEN")):
            if isinstance(secret, str) and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def _translate(self, exc: BaseException, path: str | None) -> ModelportError | None:
        """The modelport error for a ``modelscope`` client (or transport) failure; ``None`` if it is not one."""
        status = _status_of(exc)
        what = f"file {path!r} of " if path else ""
        if status == 404:
            if path is None:
                return ReferenceNotFoundError(
                    self.repo_id,
                    f"not a local path, and no such model on {self.endpoint}, "
                    f"or it is private and {self._token_note()}",
                )
            return ReferenceNotFoundError(self.repo_id, f"no file {path!r} in {self.location}")
        if status in (401, 403):
            return AccessDeniedError(
                self.repo_id, f"ModelScope answered HTTP {status} for {what}{self.location}: {self._token_note()}"
            )
        if status is not None and status >= 400:
            return DownloadError(self.repo_id, path, f"{self.endpoint} answered HTTP {status}")
        if _is_transport_error(exc):
            return DownloadError(
                self.repo_id, path, f"{self.endpoint} could not be reached ({self._scrub(_first_line(exc))})"
            )
        if isinstance(exc, OSError):  # a full disk, a size or hash check of a finished transfer...
            return DownloadError(self.repo_id, path, self._scrub(_first_line(exc)))
        return None


def _file_paths(entries: Iterable[Any]) -> list[str]:
    """The file paths of a listing; folder entries (``Type: tree``, or a path other paths sit under) are dropped."""
    paths: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        path = entry.get("Path") or entry.get("path")
        if isinstance(path, str) and path:
            paths[path.strip("/")] = str(entry.get("Type") or entry.get("type") or "blob")
    folders = {p.rsplit("/", 1)[0] for p in paths if "/" in p}
    for path in list(folders):
        while "/" in path:
            path = path.rsplit("/", 1)[0]
            folders.add(path)
    return sorted(p for p, kind in paths.items() if kind != "tree" and p not in folders)


def _status_of(exc: BaseException) -> int | None:
    # The client raises its own errors (status_code) or, from the compatibility layer, requests' HTTPError
    # (response.status_code) chained to them: look along the chain.
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        status = getattr(current, "status_code", None)
        if not isinstance(status, int):
            response = getattr(current, "response", None)
            status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status
        current = current.__cause__ or current.__context__
    return None


def _is_transport_error(exc: BaseException) -> bool:
    # requests' ConnectionError and Timeout, and the client's NetworkError (a ConnectionError), along the chain.
    import requests

    current: BaseException | None = exc
    for _ in range(8):
        if current is None:
            return False
        if isinstance(current, (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout)):
            return True
        if type(current).__name__ in ("NetworkError", "RequestTimeoutError"):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_relative(path: str) -> bool:
    # Revisions and file names become paths in the cache: never absolute, never climbing out of it.
    parts = path.replace("\\", "/").split("/")
    return bool(path) and not path.startswith("/") and ".." not in parts and "" not in parts


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_REVISION",
    "METADATA_FILES",
    "MODEL_ID_PATTERN",
    "ModelScopeSource",
    "escaped_name",
    "folder_revision",
    "legacy_folders",
    "looks_like_model_id",
    "modelscope_cache_dir",
    "modelscope_endpoint",
    "snapshot_folder",
]
