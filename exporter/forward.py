"""Forward what ``POST /v1/traces`` accepts, unchanged, to other OTLP/HTTP receivers.

Use it to feed the Datadog Agent's OTLP receiver, New Relic's or Honeycomb's OTLP endpoint, Grafana Cloud or
another collector from the traces Flowscope already receives. Each destination is a :class:`Forwarder`: its
own URL and headers, gzip, a queue bounded in bytes and in requests, the shared
:class:`~exporter.retry.RetryPolicy` (408, 429 and 5xx and connection errors are retried, ``Retry-After``
honoured; any other 4xx, or a redirect, is dropped and counted) and its own thread, so a slow or dead destination
never slows ingest (enqueueing never blocks) nor the other destinations. :class:`Forwarders` is the set the
:class:`~exporter.runtime.Exporter` owns::

    targets = resolve_destinations(parse_destinations("datadog"), {
        "FLOWSCOPE_FORWARD_DATADOG_URL": "http://127.0.0.1:4318",
        "FLOWSCOPE_FORWARD_DATADOG_HEADERS": "dd-api-key=0123abcd"})
    fw = Forwarders(targets, store, ForwardOptions()).start()
    fw.forward(c.FORMAT_OTLP_PROTOBUF, body)   # after the request was accepted; never blocks, never raises
    fw.close(timeout_s=10)

The body goes out as it came in: protobuf as protobuf, JSON as JSON, never re-encoded. Re-encoding OTLP/JSON
would need its own mapping (hex trace IDs, not protobuf-JSON's base64) and could change what the sender wrote;
a forwarder that sends the sender's bytes cannot. Under load, protobuf bodies queued for one destination go out
together, concatenated: two serialized ``ExportTraceServiceRequest`` messages concatenated are one message with
both lists of ``resource_spans`` (the protobuf encoding's merge rule for repeated fields), so nothing in any span
changes and a remote receiver sees a few large requests instead of many small ones. JSON bodies go one per request.

Configuration (:mod:`exporter.config`): ``FLOWSCOPE_FORWARD_DESTINATIONS`` names the destinations; each name's
URL and headers come from the environment, ``FLOWSCOPE_FORWARD_<NAME>_URL``, ``FLOWSCOPE_FORWARD_<NAME>_HEADERS``
and ``FLOWSCOPE_FORWARD_<NAME>_HEADERS_FILE``, headers written as OpenTelemetry's ``OTEL_EXPORTER_OTLP_HEADERS``
(``name=value`` pairs, comma- or line-separated, values percent-decoded), so a vendor's documented value is pasted
as is. Header values are secrets: never logged, masked in ``flowscope config`` and health.
"""

from __future__ import annotations

import gzip
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from . import conventions as c
from .errors import ConfigError
from .redact import mask_url
from .retry import RetryPolicy, SendError, parse_retry_after
from .worker import BatchWorker

if TYPE_CHECKING:
    import requests

    from .config import Config
    from .metrics import Counter, MetricStore

__all__ = ["ForwardOptions", "ForwardTarget", "Forwarder", "Forwarders", "parse_destinations", "parse_headers",
           "parse_url", "resolve_destinations"]

log = logging.getLogger("flowscope.forward")

#: What a destination is named by: it becomes part of environment variable names and a metric label.
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
#: An HTTP field name (RFC 9110 §5.1: a token).
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}$")
#: Control characters a field value may not hold (RFC 9110 §5.5; horizontal tab is allowed).
_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: Headers the forwarder writes itself; a configured one would contradict the body it sends.
RESERVED_HEADERS = frozenset({"content-type", "content-encoding", "content-length", "host", "transfer-encoding",
                              "connection"})
MAX_HEADER_VALUE = 8192
MAX_HEADERS_FILE_BYTES = 64 * 1024
#: The retry policy's statuses for OTLP/HTTP: 408, 429 and every 5xx (the receiver's moment, not the content).
RETRY_STATUSES = frozenset({408, 429, *range(500, 600)})
#: How long the thread waits for more bodies before it sends a partial batch: the latency forwarding adds.
LINGER_S = 0.2
#: Bodies taken per batch, at most (a batch becomes one request per :attr:`ForwardOptions.batch_bytes`).
MAX_BATCH = 256
#: zlib's fastest level: on a 1,000-span batch it costs 60 % of level 5's CPU for 10.5x instead of 12x
GZIP_LEVEL = 1
CONTENT_TYPES = {c.FORMAT_OTLP_PROTOBUF: "application/x-protobuf", c.FORMAT_OTLP_JSON: "application/json"}

OK, DEGRADED, DOWN, DISABLED = "ok", "degraded", "down", "disabled"  # the states exporter.runtime reports
RECENT_S = 60.0


def env_name(name: str, suffix: str) -> str:
    """The environment variable of one destination's setting: ``env_name("dd", "URL")`` is
    ``FLOWSCOPE_FORWARD_DD_URL``."""
    return f"FLOWSCOPE_FORWARD_{name.upper()}_{suffix}"


# -- configuration (pure) ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class ForwardTarget:
    """One resolved destination: its name, the full URL it is posted to, and its headers (secret values).

    ``repr`` and :meth:`public` show the URL masked and header names only."""

    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return f"ForwardTarget(name={self.name!r}, url={mask_url(self.url)!r}, headers={[k for k, _ in self.headers]})"

    def public(self) -> dict[str, Any]:
        """What ``flowscope config`` and health may show: URL masked, header names with masked values."""
        return {"name": self.name, "url": mask_url(self.url), "headers": {k: "***" for k, _ in self.headers}}


@dataclass(frozen=True, slots=True)
class DestinationSpec:
    """A destination as configured, before the environment is read: a name, and from a YAML mapping its URL
    and headers file."""

    name: str
    url: str | None = None
    headers_file: str | None = None


def _check_name(name: Any) -> str:
    n = str(name).strip().lower()
    if not NAME_RE.match(n):
        raise ValueError(f"destination name {str(name)[:40]!r} must be a letter then letters, digits or _ "
                         "(at most 40)")
    return n


def parse_destinations(value: Any) -> tuple[DestinationSpec | ForwardTarget, ...]:
    """``FLOWSCOPE_FORWARD_DESTINATIONS``: comma-separated names (or a YAML list of them), or, in the YAML file, a
    mapping ``name: {url: ..., headers_file: ...}`` (no header values in the file itself). Resolved targets pass
    through (``Config.replace``). Raises ValueError naming what is wrong.

    >>> parse_destinations("datadog, newrelic")
    (DestinationSpec(name='datadog', url=None, headers_file=None), DestinationSpec(name='newrelic', ...))
    """
    out: list[DestinationSpec | ForwardTarget] = []
    if isinstance(value, Mapping):
        for name, spec in value.items():
            if spec is None:
                spec = {}
            if not isinstance(spec, Mapping):
                raise ValueError(f"destination {str(name)[:40]!r} must map to {{url, headers_file}}")
            unknown = set(map(str, spec)) - {"url", "headers_file"}
            if unknown:
                raise ValueError(f"destination {str(name)[:40]!r}: unknown key {sorted(unknown)[0][:40]!r} "
                                 "(only url and headers_file; header values come from files or the environment)")
            url, hfile = spec.get("url"), spec.get("headers_file")
            out.append(DestinationSpec(_check_name(name), None if url is None else str(url),
                                       None if hfile is None else str(hfile)))
    else:
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        for item in items:
            if isinstance(item, (ForwardTarget, DestinationSpec)):
                out.append(item)
            elif str(item).strip():
                out.append(DestinationSpec(_check_name(item)))
    names = [d.name for d in out]
    for n in names:
        if names.count(n) > 1:
            raise ValueError(f"destination {n!r} is named twice")
    return tuple(out)


def parse_url(value: str) -> str:
    """The URL bodies are posted to: ``http(s)://host[:port][/path]``; ``/v1/traces`` is appended unless the path
    ends with it (as ``OTEL_EXPORTER_OTLP_ENDPOINT`` does), so a vendor's base URL works as given. Raises
    ValueError saying what is wrong (never quoting the URL, which may carry a password)."""
    v = value.strip()
    if not v:
        raise ValueError("is empty")
    if any(ch.isspace() for ch in v) or _CTL_RE.search(v):
        raise ValueError("must not contain spaces or control characters")
    try:
        u = urlsplit(v)
        port = u.port  # raises ValueError on a port out of range or not a number
    except ValueError as e:
        raise ValueError(f"is not a valid URL ({str(e).split(':')[0][:60]})") from None
    if u.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not u.hostname:
        raise ValueError("has no host")
    if port == 0:
        raise ValueError("has port 0")
    if u.fragment:
        raise ValueError("must not have a #fragment")
    path = u.path if u.path.endswith(c.OTLP_TRACES_PATH) else u.path.rstrip("/") + c.OTLP_TRACES_PATH
    full = u._replace(path=path).geturl()
    from requests.exceptions import RequestException
    from requests.models import PreparedRequest

    try:  # the client's own parse (IDNA hosts, IPv6 literals): what passes here, every post can use
        PreparedRequest().prepare_url(full, None)
    except (RequestException, ValueError, UnicodeError):
        raise ValueError("is not a URL the HTTP client can use (check the host)") from None
    return full


def parse_headers(text: str) -> tuple[tuple[str, str], ...]:
    """Headers written as ``OTEL_EXPORTER_OTLP_HEADERS`` is: ``name=value`` pairs separated by commas or lines,
    values percent-decoded; blank lines and ``#`` comments are skipped. Raises ValueError saying which pair is
    wrong and why, never quoting a value.

    >>> parse_headers("api-key=abc%20def, x-team=core")
    (('api-key', 'abc def'), ('x-team', 'core'))
    """
    out: list[tuple[str, str]] = []
    pairs = [p for line in text.splitlines() if not line.lstrip().startswith("#") for p in line.split(",")]
    n = 0
    for pair in pairs:
        if not pair.strip():
            continue
        n += 1
        name, eq, raw = pair.partition("=")
        name = name.strip()
        if not eq:
            raise ValueError(f"header {n} has no '=' (expected name=value)")
        if not HEADER_NAME_RE.match(name):
            raise ValueError(f"header {n}: {name[:40]!r} is not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {n}: {name} is set by the forwarder itself")
        try:
            value = unquote(raw, errors="strict").strip() if "%" in raw else raw.strip()
        except UnicodeDecodeError:
            raise ValueError(f"header {n} ({name}): a percent-encoded value must be UTF-8") from None
        if not value:
            raise ValueError(f"header {n} ({name}) has an empty value")
        if _CTL_RE.search(value) or len(value) > MAX_HEADER_VALUE:
            raise ValueError(f"header {n} ({name}): value has control characters or is over {MAX_HEADER_VALUE} "
                             "characters")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"header {n} ({name}): value is not ISO-8859-1 text (percent-encode it)") from None
        if any(k.lower() == name.lower() for k, _ in out):
            raise ValueError(f"header {n}: {name} is given twice")
        out.append((name, value))
    return tuple(out)


def _read_headers_file(path: str, setting: str) -> tuple[tuple[str, str], ...]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_HEADERS_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{setting}: cannot read headers file {path}: {e.strerror}") from None
    if len(raw) > MAX_HEADERS_FILE_BYTES:
        raise ConfigError(f"{setting}: headers file {path} is over {MAX_HEADERS_FILE_BYTES} bytes")
    try:
        return parse_headers(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{setting}: headers file {path}: {_message(e)}") from None


def _message(e: Exception) -> str:
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8 text"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def resolve_destinations(specs: Iterable[DestinationSpec | ForwardTarget],
                         environ: Mapping[str, str]) -> tuple[ForwardTarget, ...]:
    """Each destination's URL and headers, from ``environ`` (and a spec's own ``url`` / ``headers_file``).

    Raises :class:`~exporter.errors.ConfigError` naming the variable (or file) at fault, on one line: a missing
    or malformed URL, a malformed header, an unreadable headers file.
    """
    out: list[ForwardTarget] = []
    for spec in specs:
        if isinstance(spec, ForwardTarget):
            out.append(spec)
            continue
        url_var = env_name(spec.name, "URL")
        source, url = (f"environment {url_var}", environ[url_var]) if url_var in environ else (
            f"config file forward_destinations.{spec.name}.url", spec.url)
        if url is None:
            raise ConfigError(f"forward destination {spec.name!r} has no URL: set {url_var}")
        try:
            full = parse_url(url)
        except ValueError as e:
            raise ConfigError(f"{source}: invalid URL for forward destination {spec.name!r}: {e}") from None
        headers: list[tuple[str, str]] = []
        file_var = env_name(spec.name, "HEADERS_FILE")
        path = environ.get(file_var) or spec.headers_file
        if path:
            where = f"environment {file_var}" if environ.get(file_var) else \
                f"config file forward_destinations.{spec.name}.headers_file"
            headers += _read_headers_file(path, where)
        hdr_var = env_name(spec.name, "HEADERS")
        if environ.get(hdr_var):
            try:
                more = parse_headers(environ[hdr_var])
            except ValueError as e:
                raise ConfigError(f"environment {hdr_var}: {e}") from None
            taken = {k.lower() for k, _ in headers}
            for k, v in more:
                if k.lower() in taken:
                    raise ConfigError(f"environment {hdr_var}: header {k} is also in the headers file")
                headers.append((k, v))
        out.append(ForwardTarget(spec.name, full, tuple(headers)))
    return tuple(out)


def public_destinations(value: Sequence[Any]) -> list[Any]:
    """``forward_destinations`` as ``flowscope config`` shows it: secrets masked."""
    return [d.public() if isinstance(d, ForwardTarget) else {"name": getattr(d, "name", str(d))} for d in value]


# -- sending ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForwardOptions:
    """What every destination shares: bounds, compression, timeouts and the retry policy."""

    queue_bytes: int = 64 * 1024 * 1024
    queue_requests: int = 10_000
    batch_bytes: int = 1024 * 1024
    gzip: bool = True
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 10.0
    flush_timeout_s: float = 10.0
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(retry_statuses=RETRY_STATUSES))

    @classmethod
    def from_config(cls, config: Config) -> ForwardOptions:
        return cls(queue_bytes=config.forward_queue_bytes, gzip=config.forward_compression == "gzip",
                   connect_timeout_s=min(3.0, config.forward_timeout_s), read_timeout_s=config.forward_timeout_s,
                   retry=RetryPolicy(retry_statuses=RETRY_STATUSES, deadline_s=config.forward_retry_deadline_s))


#: One received request: its format (``FORMAT_OTLP_PROTOBUF`` / ``FORMAT_OTLP_JSON``) and its (decompressed) body.
Item = tuple[str, bytes]


class _Metrics:
    """The families all destinations share, registered once per store."""

    def __init__(self, store: MetricStore):
        self.store = store
        self.attempts: Counter = store.counter(
            c.FORWARD_REQUESTS_TOTAL, "Requests sent to forward destinations, by outcome: ok, http_<status>, "
            "connection, timeout (each retry counts).", (c.L_DESTINATION, c.L_OUTCOME))
        self.sent: Counter = store.counter(
            c.FORWARD_SENT_TOTAL, "Received OTLP requests a forward destination accepted.", (c.L_DESTINATION,))
        self.dropped: Counter = store.counter(
            c.FORWARD_DROPPED_TOTAL, "Received OTLP requests given up on per destination, by reason: queue_full, "
            "rejected (a 4xx other than 408/429), retries_exhausted, shutdown, internal_error.",
            (c.L_DESTINATION, c.L_REASON))
        self.queue_bytes = store.gauge(c.FORWARD_QUEUE_BYTES, "Body bytes queued per forward destination.",
                                       (c.L_DESTINATION,))
        self.queue_requests = store.gauge(c.FORWARD_QUEUE_REQUESTS, "Requests queued per forward destination.",
                                          (c.L_DESTINATION,))

    def inc(self, counter: Counter, key: tuple[str, ...], n: float = 1) -> None:
        with self.store.lock:
            counter.inc(key, n)


class Forwarder:
    """One destination: a bounded queue of received bodies and the thread that posts them (a :class:`BatchWorker`).

    :meth:`enqueue` never blocks and never raises; a body past either bound (bytes, counting the bodies being sent
    or retried; requests, counting those waiting) is dropped and counted (``queue_full``). Nothing is sent until
    :meth:`start`; :meth:`close` flushes (with a deadline) and stops.
    """

    def __init__(self, target: ForwardTarget, metrics: _Metrics, options: ForwardOptions,
                 session: requests.Session | None = None):
        import requests

        self.target, self.options, self._m = target, options, metrics
        self._own_session = session is None
        self.session = session or requests.Session()
        self._lock = threading.Lock()
        self._queued_bytes = 0
        self._closed = False
        self._last_drop: float | None = None  # monotonic time of the last drop, for health
        #: wall time a request was last accepted (2xx), for health: the worker's own last_ok_at is also set when
        #: a batch whose every request failed has been settled (each part's failure is counted apart)
        self._last_ok_at: float | None = None
        self.worker: BatchWorker[Item] = BatchWorker(
            f"flowscope-forward-{target.name}", self._export, on_drop=self._dropped,
            max_queue=options.queue_requests, max_batch=MAX_BATCH, linger_s=LINGER_S, policy=options.retry)
        key = (target.name,)
        metrics.queue_bytes.set_function(key, lambda: self._queued_bytes)
        metrics.queue_requests.set_function(key, self.worker.queued)
        # every label set the destination can drop under exists from the start, at 0, for rate() and alerts
        with metrics.store.lock:
            metrics.sent.inc(key, 0)
            for reason in ("queue_full", "rejected", "retries_exhausted", "shutdown"):
                metrics.dropped.inc((target.name, reason), 0)

    @property
    def name(self) -> str:
        return self.target.name

    # -- the request thread's side -------------------------------------------------------------------

    def enqueue(self, fmt: str, body: bytes) -> bool:
        """Queue one accepted request's body; False (and counted) if a bound is reached or it is closed."""
        n = len(body)
        with self._lock:
            if self._queued_bytes + n > self.options.queue_bytes and self._queued_bytes:
                full = True
            else:
                full = False
                queued = self.worker.submit((fmt, body))  # counts queue_full / shutdown itself when False
                if queued:
                    self._queued_bytes += n
        if full:
            self._dropped("queue_full", 1)
            return False
        return queued

    def queued(self) -> int:
        return self.worker.queued()

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def _dropped(self, reason: str, n: int) -> None:
        self._last_drop = time.monotonic()
        self._m.inc(self._m.dropped, (self.target.name, reason), n)

    # -- the thread's side --------------------------------------------------------------------------

    def _export(self, batch: list[Item]) -> None:
        """Post a batch as few requests as :attr:`ForwardOptions.batch_bytes` allows; each part is retried and, if
        given up on, counted on its own (:meth:`BatchWorker.deliver`). A part's bytes leave the queue's count once it
        is settled, so the bound holds what is being retried too."""
        started = time.monotonic()  # one retry deadline for the whole batch
        for fmt, parts in _group(batch, self.options.batch_bytes):
            try:
                self._send_part(fmt, parts, started)
            finally:
                with self._lock:
                    self._queued_bytes -= sum(len(p) for p in parts)

    def _send_part(self, fmt: str, parts: list[bytes], started: float) -> None:
        if self.worker.stopping.is_set():
            self._dropped("shutdown", len(parts))
            return
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        headers = dict(self.target.headers)
        headers["Content-Type"] = CONTENT_TYPES[fmt]
        if self.options.gzip:  # once per request, not per attempt
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        self.worker.deliver(partial(self._post, body, headers, len(parts)), len(parts), started=started,
                            on_retry=self._on_retry)

    def _post(self, body: bytes, headers: dict[str, str], n: int) -> None:
        """One attempt at one request of ``n`` received bodies; raises :class:`SendError` when it failed."""
        import requests

        m, name = self._m, self.target.name
        try:
            # never redirected: a POST would turn into a GET, and the API key would go wherever Location says
            r = self.session.post(self.target.url, data=body, headers=headers, allow_redirects=False,
                                  timeout=(self.options.connect_timeout_s, self.options.read_timeout_s))
        except requests.Timeout:
            m.inc(m.attempts, (name, "timeout"))
            raise SendError(f"{mask_url(self.target.url)} timed out", reason="timeout") from None
        except requests.RequestException as e:
            m.inc(m.attempts, (name, "connection"))
            raise SendError(f"{mask_url(self.target.url)} unreachable ({type(e).__name__})",
                            reason="connection") from None
        if 200 <= r.status_code < 300:
            self._last_ok_at = time.time()
            with m.store.lock:
                m.attempts.inc((name, "ok"))
                m.sent.inc((name,), n)
            return
        m.inc(m.attempts, (name, f"http_{r.status_code}" if 100 <= r.status_code < 600 else "http_other"))
        raise SendError(f"{mask_url(self.target.url)} answered HTTP {r.status_code}: {_snippet(r.text)}",
                        status=r.status_code, retry_after=parse_retry_after(r.headers.get("Retry-After")),
                        retryable=r.status_code in self.options.retry.retry_statuses)

    def _on_retry(self, error: BaseException, attempt: int, wait: float) -> None:
        log.warning("forward %s: %s; retry %d in %.2fs", self.target.name, error, attempt, wait)

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> Forwarder:
        self.worker.start()
        return self

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every body queued so far is sent or counted; False at the deadline."""
        return self.worker.force_flush(self.options.flush_timeout_s if timeout_s is None else timeout_s)

    def close(self, timeout_s: float | None = None, wait: bool = True) -> bool:
        """Send what is queued within ``timeout_s`` and stop; the rest is counted (``shutdown``)."""
        self._closed = True
        done = self.worker.shutdown(self.options.flush_timeout_s if timeout_s is None else timeout_s, wait=wait)
        if wait and not self.worker.alive():
            self._queued_bytes = 0  # what the worker still held is counted as dropped (shutdown)
            if self._own_session:
                self.session.close()
        return done

    def health(self) -> dict[str, Any]:
        """This destination's state (``ok``, ``degraded``, ``down``), queue, counts and last error; no secrets."""
        w, m, name = self.worker, self._m, self.target.name
        with m.store.lock:
            dropped = {k[1]: int(v.value) for k, v in m.dropped.series.items() if k[0] == name and v.value}
            sent = int(m.sent.get((name,)) or 0)
        last, last_ok = w.last_error, self._last_ok_at
        failing = last is not None and (last_ok is None or last[0] > last_ok)
        recent_drop = self._last_drop is not None and time.monotonic() - self._last_drop <= RECENT_S
        dead = w.started and not w.alive() and not self._closed  # its thread ended: nothing is sent any more
        unreachable = failing and last is not None and getattr(last[1], "reason", None) in ("connection", "timeout")
        if dead or unreachable:
            state = DOWN
        elif failing or recent_drop or self._queued_bytes > self.options.queue_bytes // 2 \
                or w.queued() > w.max_queue // 2:
            state = DEGRADED
        else:
            state = OK
        return {**self.target.public(), "state": state, "queued_requests": w.queued(),
                "queued_bytes": self._queued_bytes, "capacity_requests": w.max_queue,
                "capacity_bytes": self.options.queue_bytes, "sent": sent, "dropped": dropped,
                "last_error": str(last[1]).splitlines()[0][:300] if last else None,
                "last_error_at": _iso(last[0]) if last else None, "last_ok_at": _iso(last_ok)}


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t))


def _snippet(text: str) -> str:
    return " ".join(text.split())[:200]


def _group(batch: list[Item], limit: int) -> list[tuple[str, list[bytes]]]:
    """The requests a batch becomes, in order: runs of protobuf bodies concatenated up to ``limit`` bytes (one body
    over it goes alone), each JSON body alone."""
    out: list[tuple[str, list[bytes]]] = []
    size = 0
    for fmt, body in batch:
        last = out[-1] if out else None
        if (fmt == c.FORMAT_OTLP_PROTOBUF and last is not None and last[0] == fmt
                and size + len(body) <= limit):
            last[1].append(body)
            size += len(body)
        else:
            out.append((fmt, [body]))
            size = len(body)
    return out


class Forwarders:
    """Every configured destination; the :class:`~exporter.runtime.Exporter` owns one (empty when none is set).

    :meth:`forward` hands one accepted body to each destination's queue; with no destination it costs a loop over
    an empty list. The owner calls :meth:`start` and :meth:`close`.
    """

    def __init__(self, targets: Iterable[ForwardTarget], store: MetricStore, options: ForwardOptions | None = None):
        targets = tuple(targets)
        self.options = options or ForwardOptions()
        self.forwarders: list[Forwarder] = []
        if targets:
            metrics = _Metrics(store)
            self.forwarders = [Forwarder(t, metrics, self.options) for t in targets]

    @classmethod
    def from_config(cls, config: Config, store: MetricStore) -> Forwarders:
        return cls(config.forward_destinations, store, ForwardOptions.from_config(config))

    def __len__(self) -> int:
        return len(self.forwarders)

    def __getitem__(self, name: str) -> Forwarder:
        for f in self.forwarders:
            if f.name == name:
                return f
        raise KeyError(name)

    def forward(self, fmt: str, body: bytes) -> None:
        """Queue ``body`` (an accepted OTLP request, ``fmt`` its format) for every destination; never blocks."""
        for f in self.forwarders:
            try:
                f.enqueue(fmt, body)
            except Exception:  # a forwarder's bug must not fail the request that was accepted
                log.exception("forward %s: enqueue failed", f.name)

    def start(self) -> Forwarders:
        for f in self.forwarders:
            f.start()
        if self.forwarders:
            log.info("forwarding OTLP traces to %s", ", ".join(f"{f.name} ({mask_url(f.target.url)})"
                                                               for f in self.forwarders))
        return self

    def flush(self, timeout_s: float = 10.0) -> bool:
        end = time.monotonic() + timeout_s
        done = [f.flush(max(0.0, end - time.monotonic())) for f in self.forwarders]  # every one, not the first False
        return all(done)

    def close(self, timeout_s: float = 10.0, wait: bool = True) -> bool:
        """Every destination drains side by side, then each gets what is left of one deadline."""
        end = time.monotonic() + timeout_s
        for f in self.forwarders:
            f.close(timeout_s, wait=False)
        if not wait:
            return False
        done = [f.close(max(0.0, end - time.monotonic())) for f in self.forwarders]
        return all(done)

    def health(self) -> dict[str, Any]:
        """The health component: ``disabled`` with none set; else the worst destination's state (``down`` only when
        every destination is) and each destination's detail."""
        if not self.forwarders:
            return {"state": DISABLED, "reason": "FLOWSCOPE_FORWARD_DESTINATIONS is not set"}
        dests = {f.name: f.health() for f in self.forwarders}
        states = {d["state"] for d in dests.values()}
        state = DOWN if states == {DOWN} else DEGRADED if states - {OK} else OK
        return {"state": state, "destinations": dests}
