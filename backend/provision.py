"""Provision Grafana through its HTTP API with grafana-client: folder, datasources, dashboards.

Everything is upserted by uid and compared first, so running it twice changes
nothing the second time, and the report says what changed::

    report = GrafanaProvisioner(GrafanaConfig(url="http://grafana:3000", token=...)).provision(dashboards)
    # {"folder": "created", "datasources": {...: "unchanged"}, "dashboards": {...: "updated"}, "retries": 0}

5xx answers, timeouts and connection errors are retried by :data:`exporter.retry.DEFAULT_RETRY`
and counted; 401 and other 4xx are not retried and raise :class:`ProvisionError` naming what failed.
The token is only ever sent in the Authorization header: never logged, never written to a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaServerError, GrafanaTimeoutError, GrafanaUnauthorizedError

from exporter.retry import RetriesExhausted, RetryPolicy, SendError

from .dashboards.common import LOKI_DS_UID, PROM_DS_UID
from .errors import BackendError

log = logging.getLogger("flowscope.provision")

FOLDER_UID = "flowscope"
FOLDER_TITLE = "Flowscope"
RETRY = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=10.0, deadline_s=60.0)


class ProvisionError(BackendError):
    """Grafana refused a provisioning request in a way retrying cannot fix."""


@dataclass(frozen=True)
class GrafanaConfig:
    url: str
    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0
    prometheus_url: str = "http://prometheus:9090"
    loki_url: str = "http://loki:3100"
    backend_url: str = "http://localhost:9464"
    retry: RetryPolicy = RETRY


def datasource_models(cfg: GrafanaConfig) -> list[dict[str, Any]]:
    """Prometheus (exemplar trace_id → run page) and Loki (correlation_id derived field → run page)."""
    run = cfg.backend_url.rstrip("/") + "/runs/${__value.raw}"
    return [
        {"uid": PROM_DS_UID, "name": "Flowscope Prometheus", "type": "prometheus", "access": "proxy",
         "url": cfg.prometheus_url, "isDefault": False,
         "jsonData": {"httpMethod": "POST",
                      "exemplarTraceIdDestinations": [{"name": "trace_id", "url": run,
                                                                       "urlDisplayLabel": "Open run"}]}},
        {"uid": LOKI_DS_UID, "name": "Flowscope Loki", "type": "loki", "access": "proxy", "url": cfg.loki_url,
         "isDefault": False,
         "jsonData": {"derivedFields": [{"name": "correlation_id", "matcherRegex": '"correlation_id":"([^"]+)"',
                                         "url": run, "urlDisplayLabel": "Open run"}]}},
    ]


def _digest(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _same_dashboard(existing: dict, desired: dict) -> bool:
    strip = lambda d: {k: v for k, v in d.items() if k not in ("id", "version")}  # noqa: E731
    return strip(existing) == strip(desired)


def _same_datasource(existing: dict, desired: dict) -> bool:
    for k, v in desired.items():
        if k == "jsonData":
            have = existing.get("jsonData") or {}
            if any(have.get(jk) != jv for jk, jv in v.items()):
                return False
        elif existing.get(k) != v:
            return False
    return True


def _reason(error: BaseException) -> str:
    """A failed attempt in a log line: ``HTTP 503``, ``timeout``, or the transport error's type."""
    return str(error) if isinstance(error, SendError) else type(error).__name__


class GrafanaProvisioner:
    def __init__(self, cfg: GrafanaConfig, api: GrafanaApi | None = None, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None):
        self.cfg = cfg
        credential = cfg.token or ((cfg.username, cfg.password or "") if cfg.username else None)
        self.api = api or GrafanaApi.from_url(cfg.url, credential=credential, timeout=cfg.timeout_s)
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.retries = 0

    def _call(self, what: str, fn, *args, not_found_ok: bool = False):
        """One API call under the retry policy (:meth:`RetryPolicy.call`); None for a 404 when ``not_found_ok``.

        5xx answers and timeouts become retryable :class:`SendError` errors, transport errors (``OSError``) are
        retried as they are, and any other refusal is a :class:`ProvisionError` at once."""
        def attempt():
            try:
                return fn(*args)
            except GrafanaUnauthorizedError:
                raise ProvisionError(f"{what}: Grafana answered 401 Unauthorized; check the token "
                                     f"(and that it may write dashboards and datasources)") from None
            except GrafanaServerError as e:
                raise SendError(f"HTTP {e.status_code}", status=e.status_code, retryable=True) from None
            except GrafanaTimeoutError:
                raise SendError("timeout", reason="timeout") from None
            except GrafanaClientError as e:
                if e.status_code == 404 and not_found_ok:
                    return None
                if e.status_code == 412:
                    raise ProvisionError(f"{what}: Grafana answered 412 Precondition Failed (version conflict or "
                                         f"a dashboard with the same name in the folder): {e.message}") from None
                raise ProvisionError(f"{what}: Grafana answered {e.status_code}: {e.message}") from None

        def on_retry(error: BaseException, n: int, wait: float) -> None:
            self.retries += 1
            log.warning("%s: Grafana %s, retry %d in %.1fs", what, _reason(error), n, wait)

        def wait(delay: float, _error: BaseException) -> bool:
            self.sleep(delay)
            return True

        try:
            return self.cfg.retry.call(attempt, on_retry=on_retry, wait=wait, rng=self.rng)
        except RetriesExhausted as e:
            raise ProvisionError(f"{what}: Grafana unavailable ({_reason(e.last)}) after {e.attempts} attempts") \
                from None

    def _folder(self) -> str:
        have = self._call("get folder", self.api.folder.get_folder, FOLDER_UID, not_found_ok=True)
        if have is None:
            self._call("create folder", self.api.folder.create_folder, FOLDER_TITLE, FOLDER_UID)
            return "created"
        if have.get("title") != FOLDER_TITLE:
            self._call("update folder", lambda: self.api.folder.update_folder(FOLDER_UID, FOLDER_TITLE,
                                                                              overwrite=True))
            return "updated"
        return "unchanged"

    def _datasource(self, ds: dict) -> str:
        uid = ds["uid"]
        have = self._call(f"get datasource {uid}", self.api.datasource.get_datasource_by_uid, uid, not_found_ok=True)
        if have is None:
            self._call(f"create datasource {uid}", self.api.datasource.create_datasource, ds)
            return "created"
        if _same_datasource(have, ds):
            return "unchanged"
        self._call(f"update datasource {uid}", self.api.datasource.update_datasource_by_uid, uid, ds)
        return "updated"

    def _dashboard(self, d: dict) -> str:
        uid = d["uid"]
        have = self._call(f"get dashboard {uid}", self.api.dashboard.get_dashboard, uid, not_found_ok=True)
        if have is not None and (have.get("meta") or {}).get("folderUid") == FOLDER_UID \
                and _same_dashboard(have.get("dashboard") or {}, d):
            return "unchanged"
        body = {"dashboard": {**d, "id": None}, "folderUid": FOLDER_UID, "overwrite": True,
                "message": f"flowscope dashboards push ({_digest(d)})"}
        self._call(f"save dashboard {uid}", self.api.dashboard.update_dashboard, body)
        return "created" if have is None else "updated"

    def annotate(self, time_ms: int, tags: list[str], text: str) -> None:
        """One organisation-wide annotation at ``time_ms``, under the same retry and error rules."""
        self._call("add annotation", self.api.annotations.add_annotation, None, None, None, time_ms, None, tags, text)

    def provision(self, dashboards: dict[str, dict]) -> dict[str, Any]:
        report: dict[str, Any] = {"grafana": self.cfg.url, "folder": self._folder(), "datasources": {},
                                  "dashboards": {}}
        for ds in datasource_models(self.cfg):
            report["datasources"][ds["uid"]] = self._datasource(ds)
        for uid, d in sorted(dashboards.items()):
            report["dashboards"][uid] = self._dashboard(d)
        report["retries"] = self.retries
        return report
