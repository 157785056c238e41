"""The production HTTP server behind ``flowscope serve``: waitress, with its connections bounded.

Use :func:`make_server` to bind, then ``serve_forever()`` on the thread that owns the server and
``shutdown()`` from anywhere (a signal handler included)::

    server = make_server("127.0.0.1", 9464, create_app(ex), ServerLimits.from_config(cfg))
    server.serve_forever()          # returns after server.shutdown(), in-flight requests drained

Why waitress: its event loop reads each request, header and body, into a buffer before it hands
the request to a fixed pool of threads, so a client that trickles bytes, or sends nothing, costs
one socket and never a worker (gunicorn's docs ask for a buffering proxy in front for that
reason). Waitress parses HTTP; this module adds what it lacks for an exporter that must keep
answering ``/metrics`` and health under abuse, the way nginx does it:

- **A connection limit from the descriptor budget.** Unset, it is the soft ``RLIMIT_NOFILE`` less
  a reserve for the database, log and Loki sockets and waitress's temporary files, capped at
  :data:`DEFAULT_CONNECTION_CAP` (the event loop's pass over every connection is Python).
- **Eviction instead of refusal.** At the limit waitress stops accepting, so 1,000 idle sockets
  would leave a scrape in the kernel's backlog until they time out. Here a new connection closes
  the connection that has been quiet longest and has no request in the application (idle
  keep-alive and never-spoke connections before half-sent requests), like nginx's
  ``ngx_drain_connections``. A connection whose socket holds bytes the event loop has not read yet
  (accepted in the same pass, its request already sent) is not quiet, and stays.
- **A header timeout** (nginx's ``client_header_timeout``): a request's header must be complete
  within ``header_timeout_s`` of its first byte, or of the accept for a connection's first request.
- **An idle timeout** (nginx's ``keepalive_timeout``, ``client_body_timeout`` and ``send_timeout``): a
  connection is closed after ``idle_timeout_s`` without a byte either way, unless the application is
  still working on its request and has nothing for it yet.
- **JSON errors.** waitress's own refusals (400, 413, 431, 501) use the project's error shape.
"""

from __future__ import annotations

import logging
import resource
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher

__all__ = ["BoundedServer", "ServerLimits", "connection_budget", "make_server"]

log = logging.getLogger("flowscope.server")

#: Descriptors kept back from connections: stdio, the listening socket and waitress's wake-up pipe,
#: the SQLite files or PostgreSQL pool, the Loki and forwarder sockets, modules and /proc reads.
FD_RESERVE = 64
#: A further share of the descriptor limit kept for waitress's temporary files: a request body
#: over 1 MiB, or a response over 1 MiB still unsent, is buffered in a file (one more descriptor).
FD_RESERVE_FRACTION = 8
#: Default ceiling on connections: each pass of waitress's event loop asks every connection whether
#: it is readable or writable, in Python, so a pass costs more the more connections are open.
DEFAULT_CONNECTION_CAP = 1000
#: Most connections accepted per readiness event, so a burst in the backlog is taken in one pass.
ACCEPT_BATCH = 64
#: Most connections closed per eviction scan at the limit (nginx's figure).
EVICT_BATCH = 32
#: How long ``serve_forever`` waits for requests already in the application after ``shutdown()``.
DRAIN_S = 5.0
#: The body limit the server enforces sits this far above the application's ``max_body_bytes``, so
#: the application's own 413 (which names its limit) answers for bodies just over it.
BODY_MARGIN = 64 * 1024
#: Request bytes a connection buffers in memory before waitress moves the body to a temporary file.
INBUF_IN_MEMORY = 1024 * 1024
#: Seconds between summaries of connections closed by the server (only logged when there were any).
REPORT_EVERY_S = 60.0

_ERROR_CODES = {400: "bad_request", 413: "too_large", 431: "request_header_fields_too_large",
                500: "internal_server_error", 501: "not_implemented"}


def connection_budget(soft_nofile: int | None = None) -> int:
    """How many client connections fit in the descriptor limit, leaving the reserve described above.

    >>> connection_budget(1024)   # systemd's default soft limit
    832
    """
    if soft_nofile is None:
        soft_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_nofile == resource.RLIM_INFINITY:
        return DEFAULT_CONNECTION_CAP
    return max(1, soft_nofile - FD_RESERVE - soft_nofile // FD_RESERVE_FRACTION)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """The bounds of one server. ``connection_limit=None``: :data:`DEFAULT_CONNECTION_CAP`, or the
    descriptor budget (:func:`connection_budget`) where that is lower."""

    threads: int = 8
    connection_limit: int | None = None
    idle_timeout_s: float = 75.0
    header_timeout_s: float = 10.0
    max_body_bytes: int = 8 * 1024 * 1024

    @classmethod
    def from_config(cls, cfg: Any) -> ServerLimits:
        return cls(threads=cfg.threads, connection_limit=cfg.connection_limit, idle_timeout_s=cfg.idle_timeout_s,
                   header_timeout_s=cfg.header_timeout_s, max_body_bytes=cfg.max_body_bytes)

    def effective_connection_limit(self, soft_nofile: int | None = None) -> int:
        """The configured limit (or :data:`DEFAULT_CONNECTION_CAP`), never above the descriptor budget."""
        budget = connection_budget(soft_nofile)
        wanted = self.connection_limit if self.connection_limit is not None else DEFAULT_CONNECTION_CAP
        if wanted > budget and self.connection_limit is not None:
            log.warning("connection_limit %d exceeds what %s open files allow; using %d", wanted,
                        soft_nofile or resource.getrlimit(resource.RLIMIT_NOFILE)[0], budget)
        return min(wanted, budget)


class JsonErrorTask(ErrorTask):
    """waitress's refusals (malformed or oversized requests) in the project's one error shape."""

    def execute(self) -> None:
        e = self.request.error
        body = orjson.dumps({"error": {"code": _ERROR_CODES.get(e.code, "bad_request"),
                                       "message": f"{e.reason}: {e.body}"}})
        self.status = f"{e.code} {e.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class BoundedChannel(HTTPChannel):
    """One client connection; knows how long its current request header has been arriving."""

    error_task_class = JsonErrorTask

    def __init__(self, server, sock, addr, adj, map=None):
        self.header_started = time.monotonic()  # the accept counts as the start of the first request
        self.spoke = False
        super().__init__(server, sock, addr, adj, map=map)

    def received(self, data: bytes) -> bool:
        if data and self.request is None:
            self.header_started = time.monotonic()
        if data:
            self.spoke = True
        return super().received(data)

    def writable(self) -> bool:
        if not super().writable():
            return False
        if not self.requests or self.will_close or self.close_when_flushed:
            return True
        # A worker is writing this connection's response. It sends what the socket takes itself and wakes
        # the loop when it cannot; while it holds the buffer lock, asking poll() for POLLOUT only spins the
        # loop against the GIL (measured: ~180 passes per ingest request, ~2 ms of CPU, at 3 connections).
        if self.outbuf_lock.acquire(False):
            self.outbuf_lock.release()
            return True
        return False

    def service(self) -> None:
        # A request that waited for a worker starts its response now: the send timeout counts from here.
        self.last_activity = time.time()
        super().service()

    def in_app(self) -> bool:
        """A request of this connection is queued for, or running in, the application."""
        return bool(self.requests)

    def header_overdue(self, now: float, timeout_s: float) -> bool:
        if self.requests or now - self.header_started <= timeout_s:
            return False
        if self.request is None:
            return not self.spoke  # never sent a byte; later waits between requests are the idle timeout's
        return not self.request.headers_finished

    def eviction_key(self) -> tuple[bool, float]:
        """Lower evicts first: quiet connections before half-received requests or unsent responses, oldest first."""
        busy = self.request is not None or bool(self.total_outbufs_len)
        return busy and not (self.will_close or self.close_when_flushed), self.last_activity

    def close_now(self) -> None:
        if self.request is not None:
            self.request.close()
        self.handle_close()


def _unread(ch: BoundedChannel) -> bool:
    """Whether bytes wait in the channel's socket (MSG_PEEK, without blocking): a connection the event loop has
    not read yet may hold a whole request its client sent, so it is not quiet, whatever its last activity."""
    try:
        return bool(ch.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing yet (EAGAIN), or the peer reset it: nothing to lose
        return False


class BoundedServer(TcpWSGIServer):
    """waitress's TCP server with a connection limit that evicts, and header and idle timeouts.

    Build it with :func:`make_server`; the constructor binds but starts no thread.
    """

    channel_class = BoundedChannel

    def __init__(self, application, limits: ServerLimits, adj: Adjustments, sock: socket.socket | None = None):
        self.limits = limits
        self.connection_limit = adj.connection_limit
        self.closed = {"evicted": 0, "header_timeout": 0, "idle_timeout": 0, "send_timeout": 0}
        self._reported = dict(self.closed)
        self._next_report = time.monotonic() + REPORT_EVERY_S
        self._sweep_s = min(1.0, limits.header_timeout_s / 4, limits.idle_timeout_s / 4)
        self._next_sweep = 0.0
        self._stop = threading.Event()
        # sock: a listening socket to serve instead of binding one (the HTTP workers of exporter.prefork share one)
        super().__init__(application, dispatcher=ThreadedTaskDispatcher(), adj=adj, sockinfo=adj.listen[0],
                         _sock=sock, bind_socket=sock is None)

    def bind_server_socket(self) -> None:
        try:
            super().bind_server_socket()
        except OSError:
            self.trigger.close()
            self.socket.close()
            raise

    @property
    def server_address(self) -> tuple[str, int]:
        return self.effective_host, int(self.effective_port)

    # -- the event loop's side (one thread) -------------------------------------------------------

    def readable(self) -> bool:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep_s
            self.maintenance(now)
        if not self.accepting:
            return False
        # At the limit, accept only if a connection can be evicted for the new one (else leave it queued).
        return len(self.active_channels) < self.connection_limit or self._evictable()

    def handle_accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                pair = self.accept()
                if pair is None:
                    return
                conn, addr = pair
                self.set_socket_options(conn)
            except OSError as e:  # EMFILE, or the peer already gone: keep serving the others
                log.warning("accept failed: %s", e)
                return
            if len(self.active_channels) >= self.connection_limit and not self._make_room():
                conn.close()  # every connection has a request in the application: refuse this one
                return
            self.channel_class(self, conn, self.fix_addr(addr), self.adj, map=self._map)

    def _evictable(self) -> bool:
        return any(not ch.in_app() for ch in self.active_channels.values())

    def _make_room(self) -> bool:
        """Close a batch of the quietest connections, as nginx's ``ngx_drain_connections`` does.

        One scan frees up to :data:`EVICT_BATCH` places (an eighth of the candidates), so a stream of
        new connections at the limit costs a scan per batch rather than one per connection.
        """
        candidates = [ch for ch in self.active_channels.values() if not ch.in_app()]
        if not candidates:
            return False
        n = max(1, min(EVICT_BATCH, len(candidates) // 8))
        evicted = 0
        for ch in sorted(candidates, key=BoundedChannel.eviction_key):
            if evicted == n:
                break
            if _unread(ch):  # accepted in this loop, its request already sent and not yet read: not quiet
                continue
            self.closed["evicted"] += 1  # counted before the close that a client can observe
            ch.close_now()
            evicted += 1
        return evicted > 0

    def maintenance(self, now: float) -> None:  # waitress calls it with time.time(); we pass monotonic
        cutoff = time.time() - self.limits.idle_timeout_s
        for ch in list(self.active_channels.values()):
            if ch.in_app():
                # A response the client has not read from for the idle timeout (nginx's send_timeout): past
                # waitress's high watermark its worker waits for the client; closing wakes it to give up.
                if not (ch.total_outbufs_len and ch.last_activity < cutoff):
                    continue
                reason = "send_timeout"
            elif ch.header_overdue(now, self.limits.header_timeout_s):
                reason = "header_timeout"
            elif ch.last_activity < cutoff:
                reason = "idle_timeout"
            else:
                continue
            self.closed[reason] += 1  # counted before the close that a client can observe
            ch.close_now()
        if now >= self._next_report:
            self._next_report = now + REPORT_EVERY_S
            delta = {k: v - self._reported[k] for k, v in self.closed.items() if v != self._reported[k]}
            if delta:
                log.info("closed connections in the last %.0f s: %s (open: %d, limit %d)", REPORT_EVERY_S,
                         ", ".join(f"{k} {v}" for k, v in delta.items()), len(self.active_channels),
                         self.connection_limit)
                self._reported = dict(self.closed)

    # -- the owner's side --------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Start the worker threads and run the event loop until :meth:`shutdown`; then drain and stop them."""
        self.task_dispatcher.set_thread_count(self.limits.threads)
        try:
            while not self._stop.is_set():
                wasyncore.poll2(self._sweep_s, self._map)
            # Stop accepting (new connections are refused), let requests already in the application finish.
            wasyncore.dispatcher.close(self)
            deadline = time.monotonic() + DRAIN_S
            while time.monotonic() < deadline and any(
                    ch.in_app() or ch.total_outbufs_len for ch in list(self.active_channels.values())):
                wasyncore.poll2(0.05, self._map)
        finally:
            self.task_dispatcher.shutdown(cancel_pending=True, timeout=DRAIN_S)
            wasyncore.close_all(self._map)

    def shutdown(self) -> None:
        """Ask :meth:`serve_forever` to return. Safe from any thread and from a signal handler."""
        self._stop.set()
        try:
            self.pull_trigger()
        except OSError:  # the loop is already closed
            pass


def make_server(host: str, port: int, app, limits: ServerLimits | None = None,
                sock: socket.socket | None = None) -> BoundedServer:
    """Bind ``host:port`` (port 0: any free port) for ``app``, or serve ``sock``, a socket already listening there.
    Raises ``OSError`` when it cannot listen."""
    limits = limits or ServerLimits()
    try:
        adj = Adjustments(
            host=host, port=port, threads=limits.threads,
            connection_limit=limits.effective_connection_limit(),
            # waitress refuses a Content-Length equal to its limit, so the margin also keeps max_body_bytes itself.
            max_request_body_size=limits.max_body_bytes + BODY_MARGIN,
            max_request_header_size=64 * 1024,
            recv_bytes=64 * 1024,  # a 300 KB protobuf batch in 5 reads of the event loop, not 37
            # Bodies up to 1 MiB stay in memory (a 1,000-span OTLP/JSON batch is ~670 KB; spilling it to a
            # temporary file cost ~15 % of JSON ingest CPU); larger ones go to a file, as waitress does past 512 KiB.
            inbuf_overflow=INBUF_IN_MEMORY,
            channel_timeout=max(1, int(limits.idle_timeout_s)),
            # poll(), not select(): select() fails outright on descriptors past 1,023.
            asyncore_use_poll=True,
            ident="flowscope",
        )
    except ValueError as e:  # waitress's word for an address it cannot resolve
        raise OSError(f"{e} ({host}:{port})") from None
    return BoundedServer(app, limits, adj, sock)
