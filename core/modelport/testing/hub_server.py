"""A local Hugging Face Hub that the real ``huggingface_hub`` client talks to.

:class:`HubServer` is a stdlib ``ThreadingHTTPServer`` on ``127.0.0.1`` with an
ephemeral port. Point the client at it with ``HF_ENDPOINT=server.url`` (or
``endpoint=server.url``) and it downloads from it exactly as from the Hub, so a
test exercises the real cache layout, ``.incomplete`` files, locks, retries and
resumes, with no network.

What it answers, in the shapes ``huggingface_hub`` expects (see its
``file_download.py``, ``hf_api.py`` and ``utils/_http.py``):

* ``HEAD``/``GET /{repo_id}/resolve/{revision}/{path}``: the file, with
  ``X-Repo-Commit``, ``ETag`` (the git blob sha1, or for LFS files the sha256,
  also sent as ``X-Linked-Etag``/``X-Linked-Size``), ``Content-Length``,
  ``Accept-Ranges`` and ``Range`` support (``206`` + ``Content-Range``).
* ``GET /api/models/{repo_id}[/revision/{revision}]``: model info with ``sha``
  and ``siblings`` (with ``size``, ``blobId`` and ``lfs`` when ``?blobs=true``).
* ``GET /api/models/{repo_id}/tree/{revision}[/{path}]``: the tree listing
  (``?recursive=true`` for every file below).

Errors carry the ``X-Error-Code`` header the client maps to its exceptions:
``RepoNotFound`` (401 without a token, 404 with one, as the Hub does, and for
private repos the token does not grant), ``RevisionNotFound``,
``EntryNotFound`` (with ``X-Repo-Commit``, so the client caches the absence)
and ``GatedRepo`` (401 without a token, 403 with a token not granted access;
a gated repo's API metadata stays public, as on the Hub).

Repositories are built from folders or ``{path: bytes}`` dicts; every
:meth:`HubRepo.commit` makes a commit with a 40-hex sha on a branch, and
:meth:`HubRepo.tag` / :meth:`HubRepo.branch` name commits. Faults are injected
per file: :meth:`HubServer.fail` answers N requests with a 5xx,
:meth:`HubServer.cut` sends part of a body and drops the connection,
:meth:`HubServer.pause` stalls a body halfway (to make downloads overlap).
Every request is recorded (:attr:`HubServer.requests`) so that tests can
assert "fetched once", "never fetched" and "no request at all";
:meth:`HubServer.forbid_connections` makes any connection attempt to the
server's port fail the test, for offline tests.

The server's life, connection tracking, request log, fault bookkeeping, ``Range``
handling and listing walk are shared with the other local server, in
:mod:`modelport.testing.local_server`; this module has the routes and answers.

This module imports only the standard library.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from modelport.testing.local_server import (
    LocalHandler,
    LocalHTTPServer,
    LocalServer,
    RangeNotSatisfiable,
    ServedRequest,
    ServerState,
    list_tree,
)

#: Suffixes the server stores as Git LFS files (sha256 ETag, ``lfs`` metadata), as the Hub does for weights.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx", ".model")
_LFS_MIN_SIZE = 10 * 1024 * 1024
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob holding ``data`` (what the Hub sends as a regular file's ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_lfs(path: str, data: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(data) >= _LFS_MIN_SIZE


@dataclass(frozen=True)
class HubFile:
    """One file of a commit.

    Attributes:
        path: its path in the repository.
        data: its bytes.
        lfs: whether the Hub would store it with Git LFS.
    """

    path: str
    data: bytes
    lfs: bool

    @property
    def blob_id(self) -> str:
        """The git blob sha1."""
        return git_blob_sha1(self.data)

    @property
    def sha256(self) -> str:
        """The sha256 of the content (the ETag of LFS files)."""
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        """What the resolve endpoint sends as ETag: sha256 for LFS files, the blob sha1 otherwise."""
        return self.sha256 if self.lfs else self.blob_id


@dataclass(frozen=True)
class HubCommit:
    """A snapshot of a repository.

    Attributes:
        sha: the 40-hex commit id.
        files: the files at this commit, by path.
        parent: the previous commit's sha, if any.
        message: the commit message.
    """

    sha: str
    files: Mapping[str, HubFile]
    parent: str | None = None
    message: str = ""


class HubRepo:
    """A model repository on a :class:`HubServer`: commits, branches and tags, and who may read it.

    Attributes:
        repo_id: ``name`` or ``org/name``.
        private: hidden (answered as not found) from requests without a granted token.
        gated: files need a granted token (401 without a token, 403 with another);
            the API metadata stays public.
        tokens: the tokens granted access.
        commits: every commit by sha.
        refs: branch and tag names to commit shas.
    """

    def __init__(self, repo_id: str, *, private: bool = False, gated: bool = False, tokens: Iterable[str] = ()):
        self.repo_id = repo_id
        self.private = private
        self.gated = gated
        self.tokens = set(tokens)
        self.commits: dict[str, HubCommit] = {}
        self.refs: dict[str, str] = {}
        self._lock = threading.Lock()

    def commit(
        self,
        files: Path | Mapping[str, bytes | str | None],
        *,
        branch: str = "main",
        message: str = "",
        keep_existing: bool = False,
    ) -> str:
        """Commit ``files`` on ``branch`` and return the new commit's sha.

        Args:
            files: a folder (every file below it, hidden folders such as
                ``.cache`` excluded) or ``{path: content}``; a ``None`` content
                deletes that path (with ``keep_existing``).
            branch: the branch to move to the new commit (created if absent).
            message: the commit message.
            keep_existing: start from the branch's current files instead of an empty tree.
        """
        with self._lock:
            parent = self.refs.get(branch)
            current: dict[str, bytes] = {}
            if keep_existing and parent is not None:
                current = {p: f.data for p, f in self.commits[parent].files.items()}
            for path, content in _read_files(files).items():
                if content is None:
                    current.pop(path, None)
                else:
                    current[path] = content
            entries = {p: HubFile(p, data, _is_lfs(p, data)) for p, data in sorted(current.items())}
            digest = hashlib.sha1()
            for part in (self.repo_id, parent or "", message, str(len(self.commits))):
                digest.update(part.encode() + b"\0")
            for path, entry in entries.items():
                digest.update(f"{path}\0{entry.blob_id}\0".encode())
            sha = digest.hexdigest()
            self.commits[sha] = HubCommit(sha, entries, parent, message)
            self.refs[branch] = sha
            return sha

    def tag(self, name: str, revision: str = "main") -> str:
        """Point tag (or branch) ``name`` at ``revision``; returns the commit sha."""
        commit = self.resolve(revision)
        if commit is None:
            raise KeyError(f"{self.repo_id} has no revision {revision!r}")
        with self._lock:
            self.refs[name] = commit.sha
        return commit.sha

    branch = tag

    def resolve(self, revision: str) -> HubCommit | None:
        """The commit a branch, tag or full commit sha names, or ``None``."""
        sha = self.refs.get(revision, revision)
        return self.commits.get(sha) if _COMMIT_RE.match(sha) else None

    def allows(self, token: str | None) -> bool:
        """Whether ``token`` may read private or gated content."""
        return token is not None and token in self.tokens


def _read_files(files: Path | Mapping[str, bytes | str | None]) -> dict[str, bytes | None]:
    if isinstance(files, Mapping):
        return {p: (c.encode() if isinstance(c, str) else c) for p, c in files.items()}
    root = Path(files)
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[rel.as_posix()] = path.read_bytes()
    return out


@dataclass(frozen=True)
class HubRequest(ServedRequest):
    """One request the server answered (the token itself is never recorded).

    Attributes:
        method: ``GET`` or ``HEAD``.
        path: the URL path, unquoted.
        kind: ``resolve``, ``info``, ``tree`` or ``other``.
        repo_id: the repository named, if any.
        revision: the revision named, if any.
        filename: the file named (resolve) or folder (tree), if any.
        range: the ``Range`` header, if any.
        status: the status code sent.
        authorized: whether an ``Authorization`` header came with it.
        bytes_sent: body bytes written.
    """


@dataclass
class _Fault:
    filename: str
    repo_id: str | None
    method: str | None
    times: int
    status: int = 0
    cut_after: int | None = None
    pause: float = 0.0
    kind: str = "resolve"

    def matches(self, kind: str, method: str, repo_id: str | None, filename: str | None) -> bool:
        return (
            self.times > 0
            and kind == self.kind
            and filename == self.filename
            and (self.repo_id is None or repo_id == self.repo_id)
            and (self.method is None or method == self.method)
        )


_State = ServerState[HubRepo, HubRequest, _Fault]


class _Reply(Exception):
    """An error answer: status, X-Error-Code and message."""

    def __init__(self, status: int, code: str | None, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class _Handler(LocalHandler):
    server: LocalHTTPServer[_State]

    # --- routing -----------------------------------------------------------

    def serve(self, method: str) -> None:
        """Route a Hub request and record it."""
        state = self.server.state
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        auth = self.headers.get("Authorization") or ""
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        record = self.request_fields(method, path, token)
        status, sent = 500, 0
        recorded = False
        try:
            if path.startswith("/api/models/"):
                status, sent = self._api(method, split.path[len("/api/models/") :], query, token, record)
            elif "/resolve/" in split.path:
                status, sent = self._resolve(method, split.path, token, record)
            else:
                raise _Reply(404, None, f"no route for {path}")
        except _Reply as reply:
            status = reply.status
            # Recorded before the client can see the answer: a test that reads `requests` right after the
            # client raised must find it there.
            state.record(HubRequest(status=status, bytes_sent=0, **record))
            recorded = True
            self._send_error(reply)
        finally:
            if not recorded:
                state.record(HubRequest(status=status, bytes_sent=sent, **record))

    def _repo(self, repo_id: str, token: str | None) -> HubRepo:
        repo = self.server.state.repos.get(repo_id)
        if repo is None or (repo.private and not repo.allows(token)):
            # The Hub does not tell "missing" from "private and not yours": 401 without a token, 404 with one.
            raise _Reply(401 if token is None else 404, "RepoNotFound", "Repository not found")
        return repo

    def _commit(self, repo: HubRepo, revision: str) -> HubCommit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _Reply(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def _fault(self, kind: str, method: str, repo_id: str | None, filename: str | None) -> _Fault | None:
        return self.server.state.take_fault(lambda fault: fault.matches(kind, method, repo_id, filename))

    def _api(
        self, method: str, rest: str, query: Mapping[str, str], token: str | None, record: dict[str, Any]
    ) -> tuple[int, int]:
        parts = [unquote(p) for p in rest.split("/")]
        repo_id, tail = self._split_repo(parts)
        record["repo_id"] = repo_id
        if not tail:
            kind, revision, sub = "info", "main", ""
        elif tail[0] == "revision" and len(tail) >= 2:
            kind, revision, sub = "info", "/".join(tail[1:]), ""
        elif tail[0] == "tree" and len(tail) >= 2:
            kind, revision, sub = "tree", tail[1], "/".join(tail[2:])
        else:
            raise _Reply(404, None, f"no API route for {rest}")
        record.update(kind=kind, revision=revision, filename=sub or None)
        fault = self._fault(kind, method, repo_id, sub or None)
        if fault is not None and fault.status:
            raise _Reply(fault.status, None, "injected server error")
        repo = self._repo(repo_id, token)
        commit = self._commit(repo, revision)
        if kind == "info":
            body: Any = self._info(repo, commit, blobs=query.get("blobs", "").lower() in ("1", "true"))
        else:
            recursive = query.get("recursive", "").lower() in ("1", "true")
            body = self._tree(commit, sub, recursive)
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Repo-Commit", commit.sha)
        self.end_headers()
        if method == "GET":
            self.wfile.write(data)
            return 200, len(data)
        return 200, 0

    def _split_repo(self, parts: list[str]) -> tuple[str, list[str]]:
        repos = self.server.state.repos
        if len(parts) >= 2 and f"{parts[0]}/{parts[1]}" in repos:
            return f"{parts[0]}/{parts[1]}", parts[2:]
        if parts[0] in repos or len(parts) < 2 or parts[1] in ("revision", "tree"):
            return parts[0], parts[1:]
        return f"{parts[0]}/{parts[1]}", parts[2:]

    @staticmethod
    def _info(repo: HubRepo, commit: HubCommit, *, blobs: bool) -> dict[str, Any]:
        siblings = []
        for entry in commit.files.values():
            sibling: dict[str, Any] = {"rfilename": entry.path}
            if blobs:
                sibling.update(size=len(entry.data), blobId=entry.blob_id)
                if entry.lfs:
                    sibling["lfs"] = {"sha256": entry.sha256, "size": len(entry.data), "pointerSize": 134}
            siblings.append(sibling)
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": commit.sha,
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
        }

    @staticmethod
    def _tree(commit: HubCommit, sub: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = f"{sub.strip('/')}/" if sub.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            raise _Reply(404, "EntryNotFound", f"{sub} does not exist on {commit.sha}", {"X-Repo-Commit": commit.sha})
        out: list[dict[str, Any]] = []
        for path, is_folder in list_tree(commit.files, prefix, recursive):
            if is_folder:
                out.append({"type": "directory", "oid": git_blob_sha1(path.encode()), "size": 0, "path": path})
                continue
            entry = commit.files[path]
            item: dict[str, Any] = {"type": "file", "oid": entry.blob_id, "size": len(entry.data), "path": path}
            if entry.lfs:
                item["lfs"] = {"oid": entry.sha256, "size": len(entry.data), "pointerSize": 134}
            out.append(item)
        return out

    def _resolve(self, method: str, raw_path: str, token: str | None, record: dict[str, Any]) -> tuple[int, int]:
        head, _, tail = raw_path.lstrip("/").partition("/resolve/")
        revision_raw, _, file_raw = tail.partition("/")
        repo_id, revision, filename = unquote(head), unquote(revision_raw), unquote(file_raw)
        record.update(kind="resolve", repo_id=repo_id, revision=revision, filename=filename)
        fault = self._fault("resolve", method, repo_id, filename)
        if fault is not None and fault.status:
            raise _Reply(fault.status, None, "injected server error")
        repo = self._repo(repo_id, token)
        if repo.gated and not repo.allows(token):
            if token is None:
                raise _Reply(
                    401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                    "to access it. Please log in.",
                )
            raise _Reply(
                403,
                "GatedRepo",
                f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                f"Visit {self.server.url}/{repo_id} to ask for access.",
            )
        commit = self._commit(repo, revision)
        entry = commit.files.get(filename)
        if entry is None:
            raise _Reply(
                404, "EntryNotFound", f"{filename} does not exist on {revision}", {"X-Repo-Commit": commit.sha}
            )
        return self._send_file(method, commit, entry, fault)

    def _send_file(self, method: str, commit: HubCommit, entry: HubFile, fault: _Fault | None) -> tuple[int, int]:
        total = len(entry.data)
        try:
            status, first, body = self.select_body(method, entry.data)
        except RangeNotSatisfiable as error:
            raise _Reply(416, None, str(error), {"Content-Range": f"bytes */{total}"}) from None
        extra = {"X-Repo-Commit": commit.sha, "ETag": f'"{entry.etag}"'}
        if entry.lfs:
            extra.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(total)})
        self.send_file_headers(status, first, body, total, extra)
        self.end_headers()
        return status, self.write_body(body, fault) if method == "GET" else 0

    def _send_error(self, reply: _Reply) -> None:
        data = json.dumps({"error": reply.message}).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if reply.code:
            self.send_header("X-Error-Code", reply.code)
        self.send_header("X-Error-Message", reply.message)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class HubServer(LocalServer[HubRepo, HubRequest, _Fault]):
    """A local Hugging Face Hub on ``127.0.0.1`` (see the module docstring).

    Use as a context manager or call :meth:`start` and :meth:`stop`. The port
    is chosen at construction and kept across restarts, so a stopped server
    refuses connections on the address clients were given.
    """

    _label = "local Hub"
    _thread_name = "hub-server"

    def __init__(self) -> None:
        super().__init__(_State(), _Handler)

    # --- repositories --------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Path | Mapping[str, bytes | str | None] | None = None,
        *,
        private: bool = False,
        gated: bool = False,
        tokens: Iterable[str] = (),
    ) -> HubRepo:
        """Create repository ``repo_id``; with ``files``, make its first commit on ``main``."""
        repo = HubRepo(repo_id, private=private, gated=gated, tokens=tokens)
        if files is not None:
            repo.commit(files, message="initial commit")
        return self._register(repo_id, repo)

    # --- faults --------------------------------------------------------------

    def fail(
        self,
        filename: str,
        *,
        status: int = 500,
        times: int = 1,
        method: str | None = None,
        repo_id: str | None = None,
        kind: str = "resolve",
    ) -> None:
        """Answer the next ``times`` requests for ``filename`` with ``status`` (``method``: only GET or HEAD)."""
        self._add(_Fault(filename, repo_id, method, times, status=status, kind=kind))

    def cut(self, filename: str, *, after: int, times: int = 1, repo_id: str | None = None) -> None:
        """For the next ``times`` GETs of ``filename``, send ``after`` body bytes then drop the connection."""
        self._add(_Fault(filename, repo_id, "GET", times, cut_after=after))

    def pause(self, filename: str, *, seconds: float, times: int = 1, repo_id: str | None = None) -> None:
        """For the next ``times`` GETs of ``filename``, stall ``seconds`` halfway through the body."""
        self._add(_Fault(filename, repo_id, "GET", times, pause=seconds))

    # --- what happened -------------------------------------------------------

    def count(
        self,
        *,
        method: str | None = None,
        kind: str | None = None,
        filename: str | None = None,
        repo_id: str | None = None,
        status: int | None = None,
    ) -> int:
        """How many recorded requests match every criterion given."""
        return self._count(method=method, kind=kind, filename=filename, repo_id=repo_id, status=status)

    def downloads(self, filename: str, repo_id: str | None = None) -> int:
        """How many GETs of ``filename`` sent its body (whole or a range)."""
        return self._downloads("resolve", filename, repo_id)


__all__ = ["LFS_SUFFIXES", "HubCommit", "HubFile", "HubRepo", "HubRequest", "HubServer", "git_blob_sha1"]
