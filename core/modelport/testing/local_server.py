"""What the local test servers (the Hugging Face Hub and ModelScope ones) share.

:class:`LocalServer` is the server object's life (a ``ThreadingHTTPServer`` on
``127.0.0.1`` with a port kept across restarts, open connections dropped on stop),
its request log, injected faults and :meth:`LocalServer.forbid_connections`.
:class:`LocalHandler` is the request handler's part: connection tracking, a silent
access log, ``GET``/``HEAD`` dispatch, ``Range`` parsing and writing a body that an
injected fault cuts or pauses. Each server module adds its own routes and answers.

This module imports only the standard library.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar


class _Countdown(Protocol):
    times: int


class _BodyFault(Protocol):
    cut_after: int | None
    pause: float


RepoT = TypeVar("RepoT")
FaultT = TypeVar("FaultT", bound=_Countdown)


@dataclass(frozen=True)
class ServedRequest:
    """One request a local server answered (the token itself is never recorded).

    Attributes:
        method: ``GET`` or ``HEAD``.
        path: the URL path, unquoted.
        kind: the route's name (each server lists its own).
        repo_id: the repository named, if any.
        revision: the revision named, if any.
        filename: the file or folder named, if any.
        range: the ``Range`` header, if any.
        status: the status code sent.
        authorized: whether a token came with it.
        bytes_sent: body bytes written.
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


RequestT = TypeVar("RequestT", bound=ServedRequest)


@dataclass
class ServerState(Generic[RepoT, RequestT, FaultT]):
    """What a server and its handler threads share, guarded by ``lock``.

    Attributes:
        repos: the repositories by id.
        requests: the request log, in order.
        faults: the injected faults still pending.
        lock: guards every other field.
        connections: the open client connections (dropped on stop).
    """

    repos: dict[str, RepoT] = field(default_factory=dict)
    requests: list[RequestT] = field(default_factory=list)
    faults: list[FaultT] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: set[socket.socket] = field(default_factory=set)

    def take_fault(self, matches: Callable[[FaultT], bool]) -> FaultT | None:
        """The first pending fault ``matches`` accepts, with one use of it spent, or ``None``."""
        with self.lock:
            for fault in self.faults:
                if matches(fault):
                    fault.times -= 1
                    return fault
        return None

    def record(self, request: RequestT) -> None:
        """Append ``request`` to the log."""
        with self.lock:
            self.requests.append(request)


StateT = TypeVar("StateT", bound=ServerState[Any, Any, Any])


class RangeNotSatisfiable(ValueError):
    """A ``Range`` header that is malformed or outside the file (answered with 416)."""


def parse_range(wanted: str, total: int) -> tuple[int, int]:
    """The first and last byte a ``bytes=`` ``Range`` header asks for in a ``total``-byte file.

    Raises:
        RangeNotSatisfiable: the header is malformed or starts past the end.
    """
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
    if not match or not (match.group(1) or match.group(2)):
        raise RangeNotSatisfiable(f"bad range {wanted}")
    if match.group(1):
        start = int(match.group(1))
        end = min(int(match.group(2)), total - 1) if match.group(2) else total - 1
    else:
        start, end = max(total - int(match.group(2)), 0), total - 1
    if start >= total or start > end:
        raise RangeNotSatisfiable(f"range {wanted} not satisfiable")
    return start, end


def list_tree(paths: Iterable[str], prefix: str, recursive: bool) -> Iterator[tuple[str, bool]]:
    """``(path, is_folder)`` for what a listing of folder ``prefix`` (``""`` or ending in ``/``) shows.

    Folders come before the first file below them, once each; without
    ``recursive`` only the direct children of ``prefix`` are listed.
    """
    folders: set[str] = set()
    for path in paths:
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :].split("/")
        for depth in range(1, len(rest)):
            folder = prefix + "/".join(rest[:depth])
            if folder not in folders and (recursive or depth == 1):
                folders.add(folder)
                yield folder, True
        if len(rest) == 1 or recursive:
            yield path, False


class LocalHTTPServer(ThreadingHTTPServer, Generic[StateT]):
    """The listening ``ThreadingHTTPServer`` on ``127.0.0.1`` that carries the shared :class:`ServerState`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: StateT, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), handler)
        self.state = state

    @property
    def url(self) -> str:
        """``http://127.0.0.1:{port}``."""
        return f"http://127.0.0.1:{self.server_address[1]}"


class LocalHandler(BaseHTTPRequestHandler):
    """A request handler that tracks its connection and hands ``GET``/``HEAD`` to :meth:`serve`."""

    protocol_version = "HTTP/1.1"
    server: LocalHTTPServer[Any]

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log; the server records requests itself."""

    def setup(self) -> None:
        """Register the connection, so that stopping the server can drop it."""
        super().setup()
        with self.server.state.lock:
            self.server.state.connections.add(self.connection)

    def finish(self) -> None:
        """Forget the connection."""
        try:
            super().finish()
        finally:
            with self.server.state.lock:
                self.server.state.connections.discard(self.connection)

    def do_HEAD(self) -> None:
        """Answer a ``HEAD``."""
        self.serve("HEAD")

    def do_GET(self) -> None:
        """Answer a ``GET``."""
        self.serve("GET")

    def serve(self, method: str) -> None:
        """Answer one request (each server routes its own)."""
        raise NotImplementedError

    def request_fields(self, method: str, path: str, token: str | None) -> dict[str, Any]:
        """The fields of a :class:`ServedRequest` known before routing (the route fills in the rest)."""
        return {
            "method": method,
            "path": path,
            "kind": "other",
            "repo_id": None,
            "revision": None,
            "filename": None,
            "range": self.headers.get("Range"),
            "authorized": token is not None,
        }

    def select_body(self, method: str, data: bytes) -> tuple[int, int, bytes]:
        """``(status, first byte, body)``: 206 and the ``Range`` a GET asks for, else 200 and all of ``data``.

        Raises:
            RangeNotSatisfiable: the ``Range`` header is malformed or starts past the end.
        """
        wanted = self.headers.get("Range")
        if wanted and method == "GET":
            first, last = parse_range(wanted, len(data))
            return 206, first, data[first : last + 1]
        return 200, 0, data

    def send_file_headers(self, status: int, first: int, body: bytes, total: int, extra: Mapping[str, str]) -> None:
        """Send the status line and a file's headers (``extra`` before ``Content-Range``), leaving them open."""
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        for name, value in extra.items():
            self.send_header(name, value)
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{first + len(body) - 1}/{total}")

    def write_body(self, body: bytes, fault: _BodyFault | None) -> int:
        """Write ``body`` and return the bytes sent.

        With a ``fault`` whose ``cut_after`` is set, send that many bytes then drop the
        connection (the client sees a short read, a network failure); with its
        ``pause``, stall that many seconds halfway through.
        """
        cut_after, pause = (fault.cut_after, fault.pause) if fault is not None else (None, 0.0)
        if cut_after is not None:
            part = body[:cut_after]
            self.wfile.write(part)
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return len(part)
        if pause:
            half = len(body) // 2
            self.wfile.write(body[:half])
            self.wfile.flush()
            time.sleep(pause)
            self.wfile.write(body[half:])
        else:
            self.wfile.write(body)
        return len(body)


class LocalServer(Generic[RepoT, RequestT, FaultT]):
    """A local test server on ``127.0.0.1``: its life, request log and injected faults.

    Use as a context manager or call :meth:`start` and :meth:`stop`. The port is
    chosen at construction and kept across restarts, so a stopped server refuses
    connections on the address clients were given.
    """

    _label: ClassVar[str] = "local server"  # what forbid_connections' message calls it
    _thread_name: ClassVar[str] = "local-server"

    def __init__(self, state: ServerState[RepoT, RequestT, FaultT], handler: type[LocalHandler]) -> None:
        self._state = state
        self._handler = handler
        self._server: LocalHTTPServer[ServerState[RepoT, RequestT, FaultT]] | None = LocalHTTPServer(state, handler)
        self.port: int = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The endpoint to give the client (``HF_ENDPOINT``, ``MODELSCOPE_ENDPOINT``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server is accepting connections."""
        return self._thread is not None

    def start(self) -> Self:
        """Start serving (again, after :meth:`stop`) on the same port; returns ``self``."""
        if self._thread is not None:
            return self
        if self._server is None:
            self._server = LocalHTTPServer(self._state, self._handler, self.port)
        self._thread = threading.Thread(target=self._server.serve_forever, name=self._thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and drop every open (keep-alive) connection."""
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def repo(self, repo_id: str) -> RepoT:
        """The repository ``repo_id``."""
        return self._state.repos[repo_id]

    def _register(self, repo_id: str, repo: RepoT) -> RepoT:
        with self._state.lock:
            self._state.repos[repo_id] = repo
        return repo

    def _add(self, fault: FaultT) -> None:
        with self._state.lock:
            self._state.faults.append(fault)

    @property
    def requests(self) -> list[RequestT]:
        """Every request answered so far, in order."""
        with self._state.lock:
            return list(self._state.requests)

    def clear_requests(self) -> None:
        """Forget the requests recorded so far."""
        with self._state.lock:
            self._state.requests.clear()

    def _count(
        self,
        *,
        method: str | None = None,
        kind: str | None = None,
        filename: str | None = None,
        repo_id: str | None = None,
        status: int | None = None,
    ) -> int:
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method)
            and (kind is None or r.kind == kind)
            and (filename is None or r.filename == filename)
            and (repo_id is None or r.repo_id == repo_id)
            and (status is None or r.status == status)
        )

    def _downloads(self, kind: str, filename: str, repo_id: str | None) -> int:
        return sum(
            1
            for r in self.requests
            if r.kind == kind
            and r.method == "GET"
            and r.filename == filename
            and (repo_id is None or r.repo_id == repo_id)
            and r.status in (200, 206)
        )

    @contextmanager
    def forbid_connections(self) -> Iterator[list[tuple[str, int]]]:
        """Make any attempt in this process to connect to the server's port fail the test.

        Yields the list of attempts (for asserting it stays empty). Each attempt
        raises ``AssertionError``, which no HTTP client mistakes for a network
        error it may swallow.
        """
        attempts: list[tuple[str, int]] = []
        original = socket.socket.connect
        port, label = self.port, self._label

        def guarded(sock: socket.socket, address: Any) -> None:
            if isinstance(address, tuple) and len(address) >= 2 and address[1] == port:
                attempts.append((str(address[0]), int(address[1])))
                raise AssertionError(f"a network connection to the {label} ({address[0]}:{port}) was attempted")
            original(sock, address)

        socket.socket.connect = guarded  # type: ignore[method-assign,assignment]
        try:
            yield attempts
        finally:
            socket.socket.connect = original  # type: ignore[method-assign]


__all__ = [
    "LocalHTTPServer",
    "LocalHandler",
    "LocalServer",
    "RangeNotSatisfiable",
    "ServedRequest",
    "ServerState",
    "list_tree",
    "parse_range",
]
