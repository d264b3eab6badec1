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

This module imports only the standard library.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from modelport.testing.hub_server import LFS_SUFFIXES, HubCommit, HubFile, HubRepo

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
class ModelScopeRequest:
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

    method: str
    path: str
    kind: str
    repo_id: str | None
    revision: str | None
    filename: str | None
    range: str | None
    status: int
    authorized: bool
    bytes_sent: int = 0


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


@dataclass
class _State:
    repos: dict[str, ModelScopeRepo] = field(default_factory=dict)
    requests: list[ModelScopeRequest] = field(default_factory=list)
    faults: list[_Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: set[socket.socket] = field(default_factory=set)


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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default access log; requests are recorded in :attr:`ModelScopeServer.requests`."""

    def setup(self) -> None:
        super().setup()
        with self.server.state.lock:
            self.server.state.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.state.lock:
                self.server.state.connections.discard(self.connection)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("bearer ") and auth[7:].strip():
            return auth[7:].strip()
        match = re.search(r"(?:^|;\s*)m_session_id=([^;]+)", self.headers.get("Cookie") or "")
        return match.group(1) if match else None

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        token = self._token()
        record: dict[str, Any] = {
            "method": method,
            "path": path,
            "kind": "other",
            "repo_id": None,
            "revision": None,
            "filename": None,
            "range": self.headers.get("Range"),
            "authorized": token is not None,
        }
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
            with self.server.state.lock:
                self.server.state.requests.append(ModelScopeRequest(status=status, bytes_sent=sent, **record))

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
        state = self.server.state
        with state.lock:
            for fault in state.faults:
                if fault.matches(kind, repo_id, filename):
                    fault.times -= 1
                    return fault
        return None

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
        folders: set[str] = set()
        for path, entry in commit.files.items():
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):
                folder = prefix + "/".join(rest[:depth])
                if folder not in folders and (recursive or depth == 1):
                    folders.add(folder)
                    out.append(
                        {"Name": rest[depth - 1], "Path": folder, "Type": "tree", "Size": 0, "Revision": commit.sha}
                    )
            if len(rest) == 1 or recursive:
                out.append(
                    {
                        "Name": rest[-1],
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
        data = entry.data
        total = len(data)
        start, end, status = 0, total - 1, 200
        wanted = self.headers.get("Range")
        if wanted and method == "GET":
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
            if not match or not (match.group(1) or match.group(2)):
                raise _Reply(416, f"bad range {wanted}")
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), total - 1) if match.group(2) else total - 1
            else:
                start = max(total - int(match.group(2)), 0)
            if start >= total or start > end:
                raise _Reply(416, f"range {wanted} not satisfiable")
            status = 206
        body = data[start : end + 1] if total else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if _is_lfs(entry.path):
            self.send_header("X-Linked-ETag", f'"{entry.sha256}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        cut = fault.cut_after if fault is not None else None
        self._record(status, 0 if method != "GET" else len(body[:cut]) if cut is not None else len(body))
        self.end_headers()
        if method != "GET":
            return status, 0
        if fault is not None and fault.cut_after is not None:
            part = body[: fault.cut_after]
            self.wfile.write(part)
            self.wfile.flush()
            # Drop the connection mid-body: the client sees a short read (a network failure).
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return status, len(part)
        if fault is not None and fault.pause:
            half = len(body) // 2
            self.wfile.write(body[:half])
            self.wfile.flush()
            time.sleep(fault.pause)
            self.wfile.write(body[half:])
        else:
            self.wfile.write(body)
        return status, len(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: _State, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.state = state


class ModelScopeServer:
    """A local ModelScope on ``127.0.0.1`` (see the module docstring).

    Use as a context manager or call :meth:`start` and :meth:`stop`. The port is
    chosen at construction and kept across restarts.
    """

    def __init__(self) -> None:
        self._state = _State()
        self._server: _Server | None = _Server(self._state)
        self.port: int = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The endpoint to give the client (``MODELSCOPE_ENDPOINT``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server is accepting connections."""
        return self._thread is not None

    def start(self) -> ModelScopeServer:
        """Start serving (again, after :meth:`stop`) on the same port; returns ``self``."""
        if self._thread is not None:
            return self
        if self._server is None:
            self._server = _Server(self._state, self.port)
        self._thread = threading.Thread(target=self._server.serve_forever, name="modelscope-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and drop every open connection."""
        if self._server is None:
            return
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()
        self._server = None
        with self._state.lock:
            connections = list(self._state.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> ModelScopeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
        with self._state.lock:
            self._state.repos[repo_id] = repo
        return repo

    def repo(self, repo_id: str) -> ModelScopeRepo:
        """The repository ``repo_id``."""
        return self._state.repos[repo_id]

    def fail(
        self, filename: str | None, *, status: int = 500, times: int = 1, kind: str = "file", repo_id: str | None = None
    ) -> None:
        """Answer the next ``times`` requests of ``kind`` (``file``, ``files``...) for ``filename`` with ``status``."""
        with self._state.lock:
            self._state.faults.append(_Fault(filename, kind, repo_id, times, status=status))

    def cut(self, filename: str, *, after: int, times: int = 1, repo_id: str | None = None) -> None:
        """For the next ``times`` GETs of ``filename``, send ``after`` body bytes then drop the connection."""
        with self._state.lock:
            self._state.faults.append(_Fault(filename, "file", repo_id, times, cut_after=after))

    def pause(self, filename: str, *, seconds: float, times: int = 1, repo_id: str | None = None) -> None:
        """For the next ``times`` GETs of ``filename``, stall ``seconds`` halfway through the body."""
        with self._state.lock:
            self._state.faults.append(_Fault(filename, "file", repo_id, times, pause=seconds))

    @property
    def requests(self) -> list[ModelScopeRequest]:
        """Every request answered so far, in order."""
        with self._state.lock:
            return list(self._state.requests)

    def clear_requests(self) -> None:
        """Forget the requests recorded so far."""
        with self._state.lock:
            self._state.requests.clear()

    def count(
        self,
        *,
        kind: str | None = None,
        filename: str | None = None,
        repo_id: str | None = None,
        status: int | None = None,
    ) -> int:
        """How many recorded requests match every criterion given."""
        return sum(
            1
            for r in self.requests
            if (kind is None or r.kind == kind)
            and (filename is None or r.filename == filename)
            and (repo_id is None or r.repo_id == repo_id)
            and (status is None or r.status == status)
        )

    def downloads(self, filename: str, repo_id: str | None = None) -> int:
        """How many GETs of ``filename`` sent its body (whole or a range)."""
        return sum(
            1
            for r in self.requests
            if r.kind == "file"
            and r.method == "GET"
            and r.filename == filename
            and (repo_id is None or r.repo_id == repo_id)
            and r.status in (200, 206)
        )

    @contextmanager
    def forbid_connections(self) -> Iterator[list[tuple[str, int]]]:
        """Make any attempt in this process to connect to the server's port fail the test.

        Yields the list of attempts (for asserting it stays empty); each attempt
        raises ``AssertionError``, which no HTTP client mistakes for a network error.
        """
        attempts: list[tuple[str, int]] = []
        original = socket.socket.connect
        port = self.port

        def guarded(sock: socket.socket, address: Any) -> None:
            if isinstance(address, tuple) and len(address) >= 2 and address[1] == port:
                attempts.append((str(address[0]), int(address[1])))
                raise AssertionError(
                    f"a network connection to the local ModelScope ({address[0]}:{port}) was attempted"
                )
            original(sock, address)

        socket.socket.connect = guarded  # type: ignore[method-assign,assignment]
        try:
            yield attempts
        finally:
            socket.socket.connect = original  # type: ignore[method-assign]


__all__ = ["DEFAULT_BRANCH", "ModelScopeRepo", "ModelScopeRequest", "ModelScopeServer"]
