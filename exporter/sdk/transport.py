"""How the remote SDK posts a body to the Flowscope server: one kept-alive connection, one attempt per call.

Use :func:`transport_for` once per sink, and call the transport from the sender thread only::

    post = transport_for("http://flowscope:9464", token=None, timeout_s=10.0)
    post("/api/v1/spans", body, "application/json")   # raises SendError (status, Retry-After) on failure
    post.close()

A plain ``http://`` endpoint with no proxy in the environment is posted to with ``http.client`` on one
persistent connection: this is the app's own CPU, and ``requests`` costs several times more per post
(a millisecond or so on this machine, against about a fifth of one). An ``https://`` endpoint, or one the
environment routes through a proxy (``HTTP_PROXY`` / ``NO_PROXY``), goes through a ``requests.Session``,
which keeps requests' certificate and proxy handling.
"""

from __future__ import annotations

import http.client
import select
from typing import Protocol
from urllib.parse import urlsplit

import requests
import requests.utils

from ..retry import SendError, parse_retry_after

#: Errors that mean the server closed a kept-alive connection before this request reached it: the
#: request is sent again at once on a new connection (not a retry: nothing was processed).
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class Transport(Protocol):
    def __call__(self, target: str, data: bytes, ctype: str) -> None:
        """POST ``data`` to ``target`` (a path, with its query string, under the endpoint); raises SendError."""

    def close(self) -> None: ...


def transport_for(endpoint: str, token: str | None, timeout_s: float) -> Transport:
    """The cheapest transport that keeps ``endpoint``'s semantics (see the module docstring)."""
    parts = urlsplit(endpoint)
    if parts.scheme == "http" and parts.hostname and not requests.utils.get_environ_proxies(endpoint):
        return DirectHttp(parts.hostname, parts.port or 80, parts.path.rstrip("/"), token, timeout_s)
    return RequestsHttp(endpoint.rstrip("/"), token, timeout_s)


def _refused(status: int, text: str, retry_after: str | None) -> SendError:
    return SendError(f"exporter answered HTTP {status}: {text[:200]}", status=status,
                     retry_after=parse_retry_after(retry_after))


class DirectHttp:
    """``http.client`` on one kept-alive connection, reopened when the server has closed it."""

    def __init__(self, host: str, port: int, base_path: str, token: str | None, timeout_s: float):
        self.host, self.port, self.base_path, self.timeout_s = host, port, base_path, timeout_s
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._conn: http.client.HTTPConnection | None = None
        self._used = False  # the connection served a request: the server may have closed it since

    def _connection(self) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is not None and self._used and _dropped(conn):
            conn.close()
            conn = None
        if conn is None:
            conn = self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self._used = False
        return conn

    def __call__(self, target: str, data: bytes, ctype: str) -> None:
        headers = {**self.headers, "Content-Type": ctype}
        path = self.base_path + target
        for _ in range(2):  # the second time only when a kept-alive connection turned out closed
            conn = self._connection()
            reused = self._used
            try:
                conn.request("POST", path, body=data, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
            except _STALE as e:
                self.close()
                if reused:
                    continue
                raise SendError(f"exporter unreachable: {e!r}") from None
            except (OSError, http.client.HTTPException) as e:  # refused, timed out, garbled
                self.close()
                raise SendError(f"exporter unreachable: {e!r}",
                                reason="timeout" if isinstance(e, TimeoutError) else None) from None
            self._used = True
            if resp.status >= 300:
                raise _refused(resp.status, body.decode("utf-8", "replace"), resp.getheader("Retry-After"))
            return

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection was closed by the server (it is readable: EOF, or junk)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        if hasattr(select, "poll"):  # poll, not select: an app may hold more than 1,024 descriptors
            p = select.poll()
            p.register(sock, select.POLLIN)
            return bool(p.poll(0))
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class RequestsHttp:
    """A ``requests.Session``: HTTPS with requests' certificates, and the environment's proxies."""

    def __init__(self, base: str, token: str | None, timeout_s: float):
        self.base, self.timeout_s = base, timeout_s
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = requests.Session()

    def __call__(self, target: str, data: bytes, ctype: str) -> None:
        try:
            r = self._session.post(self.base + target, data=data, headers={**self.headers, "Content-Type": ctype},
                                   timeout=self.timeout_s)
        except requests.RequestException as e:
            raise SendError(f"exporter unreachable: {e}") from None
        if r.status_code >= 300:
            raise _refused(r.status_code, r.text, r.headers.get("Retry-After"))

    def close(self) -> None:
        self._session.close()


__all__ = ["DirectHttp", "RequestsHttp", "Transport", "transport_for"]
