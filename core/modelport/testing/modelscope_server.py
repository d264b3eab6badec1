"""A local ModelScope that the real ``modelscope`` client talks to.

:class:`ModelScopeServer` is a stdlib ``ThreadingHTTPServer`` on ``127.0.0.1``
with an ephemeral port. Point the client at it with
``MODELSCOPE_ENDPOINT=server.url`` (or ``endpoint=server.url``) and it lists and
downloads exactly as from ModelScope, so a test exercises the client's real
cache layout, file locks, ``.incomplete`` files and resumes, with no network.

What it answers, in the shapes the ``modelscope`` client (``modelscope_hub``'s
``_legacy_api.py`` and ``_download.py``) expects, every JSON body wrapped as
``{"Code": 200, "Data": ..., "Message": "success", "RequestId": ..., "Success": true}``:

* ``GET /api/v1/models/{owner}/{name}``: repository info (kind ``info``).
* ``GET /api/v1/models/{owner}/{name}/revisions``: branches and tags
  (``Data.RevisionMap.Branches`` / ``Tags``, each ``{"Revision", "CreatedAt", "CommitId"}``;
  kind ``revisions``).
* ``GET /api/v1/models/{owner}/{name}/repo/files?Revision=&Recursive=&Root=``: the
  file listing (``Data.Files``: ``Path``, ``Name``, ``Type`` ``blob``/``tree``,
  ``Size``, ``Sha256``, ``Revision``, ``IsLFS``; kind ``files``).
* ``GET /api/v1/models/{owner}/{name}/repo?Revision=&FilePath=``: one file, with
  ``Content-Length``, ``Accept-Ranges`` and ``Range`` support (``206`` +
  ``Content-Range``); weights (``LFS_SUFFIXES``) also carry ``X-Linked-ETag``, their
  sha256, which the client checks the download against (kind ``file``).

Anything else (the client's region probe, the OpenAPI surface) is a JSON 404
(kind ``other``). Errors are JSON bodies with ``Code``, ``Message`` and
``Success: false``: 404 for a missing repository, revision or file; for a
private repository, 401 without a token and 403 with a token it does not
grant (tokens arrive as ``Authorization: Bearer`` or the ``m_session_id`` cookie).

Repositories are :class:`ModelScopeRepo` (a :class:`~modelport.testing.hub_server.HubRepo`
whose default branch is ``master``, as on ModelScope): commits, branches and tags.
Faults are injected per file: :meth:`ModelScopeServer.fail` answers N requests
with an error status, :meth:`ModelScopeServer.cut` sends part of a body and drops
the connection, :meth:`ModelScopeServer.pause` stalls a body halfway (to make
downloads overlap). Every request is recorded
(:attr:`ModelScopeServer.requests`, the token never), before its headers are sent, so
tests can assert "fetched once", "never fetched" and "no request at all" as soon as
the client returns;
:meth:`ModelScopeServer.forbid_connections` makes any connection to the server's
port fail the test, for offline tests.

The server's life, connection tracking, request log, fault bookkeeping, ``Range``
handling and listing walk are shared with the other local server, in
:mod:`modelport.testing.local_server`; this module has the routes and answers.

This module imports only the standard library.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from modelport.testing.hub_server import LFS_SUFFIXES, HubCommit, HubFile, HubRepo
from modelport.testing.local_server import (
    LocalHandler,
    LocalHTTPServer,
    LocalServer,
    RangeNotSatisfiable,
    ServedRequest,
    ServerState,
    list_tree,
)

#: ModelScope's default branch.
DEFAULT_BRANCH = "master"


class ModelScopeRepo(HubRepo):
    """A model repository on a :class:`ModelScopeServer`: commits, branches (``master`` first) and tags.

    Attributes:
        tags: the names :meth:`tag` made (listed as tags; every other ref is a branch).
        created: when each ref was last moved (seconds since the epoch).
    """

    def __init__(self, repo_id: str, *, private: bool = False, tokens: Iterable[str] = ()) -> None:
        if repo_id.count("/") != 1:
            raise ValueError(f"a ModelScope id is 'owner/name', not {repo_id!r}")
        super().__init__(repo_id, private=private, tokens=tokens)
        self.tags: set[str] = set()
        self.created: dict[str, int] = {}

    def commit(
        self,
        files: Path | Mapping[str, bytes | str | None],
        *,
        branch: str = DEFAULT_BRANCH,
        message: str = "",
        keep_existing: bool = False,
    ) -> str:
        """Commit ``files`` on ``branch`` (``master`` by default); see :meth:`HubRepo.commit`."""
        sha = super().commit(files, branch=branch, message=message, keep_existing=keep_existing)
        self.created[branch] = int(time.time())
        return sha

    def tag(self, name: str, revision: str = DEFAULT_BRANCH) -> str:
        """Tag ``revision`` (a branch, tag or commit) as ``name``; returns the commit sha."""
        sha = super().tag(name, revision)
        self.tags.add(name)
        self.created[name] = int(time.time())
        return sha

    def branch(self, name: str, revision: str = DEFAULT_BRANCH) -> str:  # type: ignore[override]
        """Create (or move) branch ``name`` at ``revision``; returns the commit sha."""
        sha = super().tag(name, revision)
        self.tags.discard(name)
        self.created[name] = int(time.time())
        return sha


@dataclass(frozen=True)
class ModelScopeRequest(ServedRequest):
    """One request the server answered (the token itself is never recorded).

    Attributes:
        method: ``GET`` or ``HEAD``.
        path: the URL path, unquoted.
        kind: ``file``, ``files``, ``revisions``, ``info`` or ``other``.
        repo_id: the repository named, if any.
        revision: the ``Revision`` asked for, if any.
        filename: the ``FilePath`` (``file``) or ``Root`` (``files``) asked for, if any.
        range: the ``Range`` header, if any.
        status: the status code sent.
        authorized: whether a token (header or cookie) came with it.
        bytes_sent: body bytes written for a file.
    """


@dataclass
class _Fault:
    filename: str | None
    kind: str
    repo_id: str | None
    times: int
    status: int = 0
    pause: float = 0.0
    cut_after: int | None = None

    def matches(self, kind: str, repo_id: str | None, filename: str | None) -> bool:
        return (
            self.times > 0
            and kind == self.kind
            and (self.filename is None or filename == self.filename)
            and (self.repo_id is None or repo_id == self.repo_id)
        )


_State = ServerState[ModelScopeRepo, ModelScopeRequest, _Fault]


class _Reply(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _envelope(data: Any) -> bytes:
    return json.dumps(
        {"Code": 200, "Data": data, "Message": "success", "RequestId": uuid.uuid4().hex, "Success": True}
    ).encode()


def _is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


class _Handler(LocalHandler):
    server: LocalHTTPServer[_State]

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("bearer ") and auth[7:].strip():
            return auth[7:].strip()
        match = re.search(r"(?:^|;\s*)m_session_id=([^;]+)", self.headers.get("Cookie") or "")
        return match.group(1) if match else None

    def serve(self, method: str) -> None:
        """Route a ModelScope request and record it."""
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        token = self._token()
        record = self.request_fields(method, path, token)
        self._record_fields: dict[str, Any] | None = record
        try:
            status, sent = self._route(method, path, query, token, record)
        except _Reply as reply:
            self._send_json(reply.status, {"Code": reply.status, "Message": reply.message, "Success": False})
            return
        self._record(status, sent)

    def _record(self, status: int, sent: int) -> None:
        # Called before the headers go out, so a test reading `requests` as soon as its client returns finds it.
        record, self._record_fields = self._record_fields, None
        if record is not None:
            self.server.state.record(ModelScopeRequest(status=status, bytes_sent=sent, **record))

    def _route(
        self, method: str, path: str, query: Mapping[str, str], token: str | None, record: dict[str, Any]
    ) -> tuple[int, int]:
        prefix = "/api/v1/models/"
        parts = path[len(prefix) :].split("/") if path.startswith(prefix) else []
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise _Reply(404, f"no route for {path}")
        repo_id, tail = f"{parts[0]}/{parts[1]}", parts[2:]
        record["repo_id"] = repo_id
        if not tail:
            kind = "info"
        elif tail == ["revisions"]:
            kind = "revisions"
        elif tail == ["repo", "files"]:
            kind = "files"
            record.update(revision=query.get("Revision") or DEFAULT_BRANCH, filename=query.get("Root") or None)
        elif tail == ["repo"]:
            kind = "file"
            record.update(revision=query.get("Revision") or DEFAULT_BRANCH, filename=query.get("FilePath"))
        else:
            raise _Reply(404, f"no route for {path}")
        record["kind"] = kind
        fault = self._fault(kind, repo_id, record["filename"])
        if fault is not None and fault.status:
            raise _Reply(fault.status, "injected server error")
        repo = self._repo(repo_id, token)
        if kind == "info":
            return self._send_json(200, self._info(repo), envelope=True)
        if kind == "revisions":
            return self._send_json(200, self._revisions(repo), envelope=True)
        commit = repo.resolve(record["revision"])
        if commit is None:
            raise _Reply(404, f"The model: {repo_id} has no revision: {record['revision']}")
        if kind == "files":
            recursive = (query.get("Recursive") or "false").lower() == "true"
            return self._send_json(200, {"Files": self._files(commit, record["filename"], recursive)}, envelope=True)
        filename = record["filename"] or ""
        entry = commit.files.get(filename)
        if entry is None:
            raise _Reply(404, f"File {filename} not found in {repo_id} at revision {record['revision']}")
        return self._send_file(method, entry, fault)

    def _repo(self, repo_id: str, token: str | None) -> ModelScopeRepo:
        repo = self.server.state.repos.get(repo_id)
        if repo is None:
            raise _Reply(404, f"Model {repo_id} not found")
        if repo.private and not repo.allows(token):
            if token is None:
                raise _Reply(401, f"Model {repo_id} is private: log in to access it")
            raise _Reply(403, f"Model {repo_id} is private and the token is not granted access")
        return repo

    def _fault(self, kind: str, repo_id: str, filename: str | None) -> _Fault | None:
        return self.server.state.take_fault(lambda fault: fault.matches(kind, repo_id, filename))

    @staticmethod
    def _info(repo: ModelScopeRepo) -> dict[str, Any]:
        owner, name = repo.repo_id.split("/")
        return {
            "Id": int(hashlib.sha1(repo.repo_id.encode()).hexdigest()[:8], 16),
            "Name": name,
            "Path": owner,
            "ChineseName": name,
            "Visibility": 1 if repo.private else 5,
            "Revision": DEFAULT_BRANCH,
            "Downloads": 0,
        }

    @staticmethod
    def _revisions(repo: ModelScopeRepo) -> dict[str, Any]:
        branches: list[dict[str, Any]] = []
        tags: list[dict[str, Any]] = []
        for name, sha in sorted(repo.refs.items()):
            item = {"Revision": name, "CreatedAt": repo.created.get(name, 0), "CommitId": sha}
            (tags if name in repo.tags else branches).append(item)
        return {"RevisionMap": {"Branches": branches, "Tags": tags}}

    @staticmethod
    def _files(commit: HubCommit, root: str | None, recursive: bool) -> list[dict[str, Any]]:
        prefix = f"{root.strip('/')}/" if root and root.strip("/") else ""
        out: list[dict[str, Any]] = []
        for path, is_folder in list_tree(commit.files, prefix, recursive):
            name = path.rsplit("/", 1)[-1]
            if is_folder:
                out.append({"Name": name, "Path": path, "Type": "tree", "Size": 0, "Revision": commit.sha})
                continue
            entry = commit.files[path]
            out.append(
                {
                    "Name": name,
                    "Path": path,
                    "Type": "blob",
                    "Size": len(entry.data),
                    "Sha256": entry.sha256,
                    "Revision": commit.sha,
                    "IsLFS": _is_lfs(path),
                    "Mode": "33188",
                }
            )
        return out

    def _send_json(self, status: int, body: Any, *, envelope: bool = False) -> tuple[int, int]:
        data = _envelope(body) if envelope else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self._record(status, 0)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        return status, 0

    def _send_file(self, method: str, entry: HubFile, fault: _Fault | None) -> tuple[int, int]:
        try:
            status, first, body = self.select_body(method, entry.data)
        except RangeNotSatisfiable as error:
            raise _Reply(416, str(error)) from None
        extra = {"X-Linked-ETag": f'"{entry.sha256}"'} if _is_lfs(entry.path) else {}
        self.send_file_headers(status, first, body, len(entry.data), extra)
        cut = fault.cut_after if fault is not None else None
        self._record(status, 0 if method != "GET" else len(body[:cut]) if cut is not None else len(body))
        self.end_headers()
        return status, self.write_body(body, fault) if method == "GET" else 0


class ModelScopeServer(LocalServer[ModelScopeRepo, ModelScopeRequest, _Fault]):
    """A local ModelScope on ``127.0.0.1`` (see the module docstring).

    Use as a context manager or call :meth:`start` and :meth:`stop`. The port is
    chosen at construction and kept across restarts.
    """

    _label = "local ModelScope"
    _thread_name = "modelscope-server"

    def __init__(self) -> None:
        super().__init__(_State(), _Handler)

    def add_repo(
        self,
        repo_id: str,
        files: Path | Mapping[str, bytes | str | None] | None = None,
        *,
        private: bool = False,
        tokens: Iterable[str] = (),
    ) -> ModelScopeRepo:
        """Create repository ``owner/name``; with ``files``, make its first commit on ``master``."""
        repo = ModelScopeRepo(repo_id, private=private, tokens=tokens)
        if files is not None:
            repo.commit(files, message="initial commit")
        return self._register(repo_id, repo)

    def fail(
        self, filename: str | None, *, status: int = 500, times: int = 1, kind: str = "file", repo_id: str | None = None
    ) -> None:
        """Answer the next ``times`` requests of ``kind`` (``file``, ``files``...) for ``filename`` with ``status``."""
        self._add(_Fault(filename, kind, repo_id, times, status=status))

    def cut(self, filename: str, *, after: int, times: int = 1, repo_id: str | None = None) -> None:
        """For the next ``times`` GETs of ``filename``, send ``after`` body bytes then drop the connection."""
        self._add(_Fault(filename, "file", repo_id, times, cut_after=after))

    def pause(self, filename: str, *, seconds: float, times: int = 1, repo_id: str | None = None) -> None:
        """For the next ``times`` GETs of ``filename``, stall ``seconds`` halfway through the body."""
        self._add(_Fault(filename, "file", repo_id, times, pause=seconds))

    def count(
        self,
        *,
        kind: str | None = None,
        filename: str | None = None,
        repo_id: str | None = None,
        status: int | None = None,
    ) -> int:
        """How many recorded requests match every criterion given."""
        return self._count(kind=kind, filename=filename, repo_id=repo_id, status=status)

    def downloads(self, filename: str, repo_id: str | None = None) -> int:
        """How many GETs of ``filename`` sent its body (whole or a range)."""
        return self._downloads("file", filename, repo_id)


__all__ = ["DEFAULT_BRANCH", "ModelScopeRepo", "ModelScopeRequest", "ModelScopeServer"]
