"""Send the generated monitors, SLOs, dashboards and NRQL conditions through the vendors' APIs, idempotently.

Each object is found by its name (Datadog: among the objects tagged ``managed-by:flowscope``; New Relic: in
the ``Flowscope`` policy), compared with what would be sent, and created, updated or left alone; the report
says which, so a second run reports every object ``unchanged`` and sends no write. Objects Flowscope made that
the spec no longer generates are listed under ``not_in_spec`` and never deleted::

    report = DatadogPusher(DatadogConfig(url, api_key=..., app_key=...)).push(spec)
    report = NewRelicPusher(NewRelicConfig(url, api_key=..., account_id=...)).push(spec)

The retry and error rules are the Grafana provisioning's (:mod:`backend.provision`): 429/5xx, timeouts and
connection errors are retried by :data:`backend.provision.RETRY`; 401/403 and any other 4xx raise
:class:`~backend.integrations.IntegrationError` naming what was refused. Keys come only from the environment
or files (:func:`secret`) and are only ever sent in the vendors' headers: never logged, never in an error.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
import urllib3
from datadog_api_client import ApiClient, Configuration
from datadog_api_client.exceptions import ApiException, ForbiddenException, UnauthorizedException
from datadog_api_client.v1.api.dashboards_api import DashboardsApi
from datadog_api_client.v1.api.monitors_api import MonitorsApi
from datadog_api_client.v1.api.service_level_objectives_api import ServiceLevelObjectivesApi
from datadog_api_client.v1.model.dashboard import Dashboard
from datadog_api_client.v1.model.monitor import Monitor
from datadog_api_client.v1.model.monitor_update_request import MonitorUpdateRequest
from datadog_api_client.v1.model.service_level_objective import ServiceLevelObjective
from datadog_api_client.v1.model.service_level_objective_request import ServiceLevelObjectiveRequest

from backend.dashboards.build import dashboards as grafana_dashboards
from backend.rules.spec import Spec
from exporter import conventions as c
from exporter.retry import RetriesExhausted, RetryPolicy, SendError, parse_retry_after

from ..provision import RETRY
from . import IntegrationError, datadog, newrelic
from .datadog import as_dict

log = logging.getLogger("flowscope.integrations")
T = TypeVar("T")

DEFAULT_DATADOG_SITE = "datadoghq.com"
DEFAULT_NEWRELIC_URL = "https://api.newrelic.com/graphql"
#: Pages read when listing, at most: 1000 objects a page is far beyond what one spec generates.
MAX_PAGES = 20
PAGE_SIZE = 1000


def secret(name: str, environ: Mapping[str, str] | None = None) -> str:
    """A key from ``<NAME>_FILE`` (a path; preferred) or ``<NAME>``; never from the command line."""
    env = os.environ if environ is None else environ
    path = env.get(f"{name}_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                value = fh.read().strip()
        except OSError as e:
            raise IntegrationError(f"{name}_FILE: cannot read {path}: {e.strerror or e}") from None
        if not value:
            raise IntegrationError(f"{name}_FILE: {path} is empty")
        return value
    value = (env.get(name) or "").strip()
    if not value:
        raise IntegrationError(f"set {name}_FILE (a file holding the key) or {name}")
    return value


def contains(have: Any, want: Any) -> bool:
    """Whether ``have`` (what the API returned) holds everything of ``want`` (what would be sent).

    The APIs add fields of their own (ids, defaults, timestamps), so only the sent ones are compared."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(contains(have.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(contains(h, w) for h, w in zip(have, want))
    if isinstance(want, float) or isinstance(have, float):
        return isinstance(have, (int, float)) and not isinstance(have, bool) and float(have) == float(want)
    return bool(have == want)


def _reason(error: BaseException) -> str:
    return str(error) if isinstance(error, SendError) else type(error).__name__


class _Retrying:
    """The Grafana provisioning's retry loop, for one vendor."""

    vendor = ""

    def __init__(self, retry: RetryPolicy, sleep: Callable[[float], None], rng: random.Random | None):
        self.retry, self.sleep, self.rng = retry, sleep, rng or random.Random()
        self.retries = 0

    def _attempt(self, what: str, fn: Callable[[], T]) -> T:
        raise NotImplementedError

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` under the policy; ``what`` names the request in logs and errors."""
        def on_retry(error: BaseException, n: int, wait: float) -> None:
            self.retries += 1
            log.warning("%s: %s %s, retry %d in %.1fs", what, self.vendor, _reason(error), n, wait)

        def wait(delay: float, _error: BaseException) -> bool:
            self.sleep(delay)
            return True

        try:
            return self.retry.call(lambda: self._attempt(what, fn), on_retry=on_retry, wait=wait, rng=self.rng)
        except RetriesExhausted as e:
            raise IntegrationError(f"{what}: {self.vendor} unavailable ({_reason(e.last)}) after {e.attempts} "
                                   f"attempts") from None


# --- Datadog ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatadogConfig:
    url: str
    api_key: str = field(repr=False)
    app_key: str = field(repr=False)
    timeout_s: float = 10.0
    retry: RetryPolicy = RETRY

    @staticmethod
    def from_env(url: str | None = None, environ: Mapping[str, str] | None = None) -> DatadogConfig:
        """``DD_API_KEY[_FILE]``, ``DD_APP_KEY[_FILE]``; the API at ``url``, else ``https://api.$DD_SITE``."""
        env = os.environ if environ is None else environ
        site = env.get("DD_SITE") or DEFAULT_DATADOG_SITE
        return DatadogConfig(url=url or f"https://api.{site}", api_key=secret("DD_API_KEY", env),
                             app_key=secret("DD_APP_KEY", env))


class DatadogPusher(_Retrying):
    """Requests are built from ``datadog-api-client``'s typed models and sent by its API classes; answers are
    read as JSON and checked here (the client's own deserialiser loops forever on some malformed answers)."""

    vendor = "Datadog"

    def __init__(self, cfg: DatadogConfig, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None):
        super().__init__(cfg.retry, sleep, rng)
        self.cfg = cfg
        conf = Configuration(host=cfg.url.rstrip("/"), api_key={"apiKeyAuth": cfg.api_key,
                                                                "appKeyAuth": cfg.app_key},
                             request_timeout=cfg.timeout_s, enable_retry=False, compress=False,
                             preload_content=False)  # type: ignore[no-untyped-call]
        conf.logger["urllib3_logger"].setLevel(logging.WARNING)
        self.client = ApiClient(conf)
        self.monitors_api = MonitorsApi(self.client)  # type: ignore[no-untyped-call]
        self.slos_api = ServiceLevelObjectivesApi(self.client)  # type: ignore[no-untyped-call]
        self.dashboards_api = DashboardsApi(self.client)  # type: ignore[no-untyped-call]

    def _attempt(self, what: str, fn: Callable[[], T]) -> T:
        try:
            response: Any = fn()
            try:
                raw = response.data
            finally:
                response.release_conn()
        except UnauthorizedException:
            raise IntegrationError(f"{what}: Datadog answered 401 Unauthorized; check DD_API_KEY and DD_APP_KEY "
                                   f"(and the site: {self.cfg.url})") from None
        except ForbiddenException:
            raise IntegrationError(f"{what}: Datadog answered 403 Forbidden; the application key needs the "
                                   f"monitors_write, slos_write and dashboards_write scopes") from None
        except ApiException as e:
            status = e.status or 0
            if status in self.retry.retry_statuses or status == 0:
                raise SendError(f"HTTP {status}" if status else "connection", status=status or None,
                                retryable=True) from None
            raise IntegrationError(f"{what}: Datadog answered {status}: {(e.body or e.reason or '')!s:.300}") \
                from None
        except urllib3.exceptions.TimeoutError:
            raise SendError("timeout", reason="timeout") from None
        except urllib3.exceptions.HTTPError as e:
            raise SendError(type(e).__name__) from None
        try:
            answer: T = json.loads(raw)
        except ValueError:
            raise IntegrationError(f"{what}: Datadog's answer is not JSON") from None
        return answer

    def close(self) -> None:
        self.client.close()

    # The listings: the objects Flowscope owns, by name, as the API returned them.

    def _listing(self, what: str, fn: Callable[[int], Any], key: str | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for page in range(MAX_PAGES):
            answer = self.call(what, lambda p=page: fn(p))  # type: ignore[misc]
            items = answer.get(key) if key is not None and isinstance(answer, dict) else answer
            if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
                raise IntegrationError(f"{what}: Datadog's answer is not a list of objects"
                                       + (f" under {key!r}" if key else ""))
            out += items
            if len(items) < PAGE_SIZE:
                break
        return out

    @staticmethod
    def _by_name(what: str, items: list[dict[str, Any]], name: str = "name",
                 id_type: type | tuple[type, ...] = str) -> dict[str, dict[str, Any]]:
        for x in items:
            if not isinstance(x.get(name), str) or not isinstance(x.get("id"), id_type):
                raise IntegrationError(f"{what}: an object in Datadog's answer has no {name} or id")
        return {x[name]: x for x in items}

    def _slo(self, want: ServiceLevelObjectiveRequest, have: dict[str, Any] | None) -> tuple[str, str]:
        body = as_dict(want)
        if have is None:
            what = f"create SLO {want.name}"
            got: Any = self.call(what, lambda: self.slos_api.create_slo(body=want))  # the answer as JSON
            data = got.get("data") if isinstance(got, dict) else None
            if not (isinstance(data, list) and data and isinstance(data[0], dict) and data[0].get("id")):
                raise IntegrationError(f"{what}: Datadog's answer has no data[0].id")
            return "created", str(data[0]["id"])
        if contains(have, body):
            return "unchanged", str(have["id"])
        self.call(f"update SLO {want.name}", lambda: self.slos_api.update_slo(
            slo_id=str(have["id"]), body=ServiceLevelObjective(**{k: getattr(want, k) for k in body})))
        return "updated", str(have["id"])

    def _monitor(self, want: Monitor, have: dict[str, Any] | None) -> str:
        body = as_dict(want)
        if have is None:
            self.call(f"create monitor {want.name}", lambda: self.monitors_api.create_monitor(body=want))
            return "created"
        if contains(have, body):
            return "unchanged"
        update = MonitorUpdateRequest(**{k: getattr(want, k) for k in body})
        self.call(f"update monitor {want.name}", lambda: self.monitors_api.update_monitor(
            monitor_id=int(have["id"]), body=update))
        return "updated"

    def _dashboard(self, want: Dashboard, have_id: str | None) -> str:
        if have_id is None:
            self.call(f"create dashboard {want.title}", lambda: self.dashboards_api.create_dashboard(body=want))
            return "created"
        have: Any = self.call(f"get dashboard {want.title}", lambda: self.dashboards_api.get_dashboard(have_id))
        if contains(have, as_dict(want)):
            return "unchanged"
        self.call(f"update dashboard {want.title}", lambda: self.dashboards_api.update_dashboard(have_id, want))
        return "updated"

    def push(self, spec: Spec) -> dict[str, Any]:
        """SLOs first (the burn-rate monitors name them by id), then monitors, then dashboards."""
        report: dict[str, Any] = {"datadog": self.cfg.url, "slos": {}, "monitors": {}, "dashboards": {}}
        have_slos = self._by_name("list SLOs", self._listing("list SLOs", lambda p: self.slos_api.list_slos(
            tags_query=c.DATADOG_MANAGED_TAG, limit=PAGE_SIZE, offset=p * PAGE_SIZE), "data"))
        ids: dict[str, str] = {}
        for slo in datadog.slos(spec):
            report["slos"][slo.name], ids[slo.name] = self._slo(slo, have_slos.get(slo.name))
        have_monitors = self._by_name("list monitors", self._listing(
            "list monitors", lambda p: self.monitors_api.list_monitors(
                monitor_tags=c.DATADOG_MANAGED_TAG, page=p, page_size=PAGE_SIZE), None), id_type=int)
        for m in datadog.monitors(spec):
            query = m.query
            for name, slo_id in ids.items():  # quoted: one SLO's name may begin another's (pay-…, pay-…-eu-…)
                query = query.replace(f'"{datadog.SLO_REF_PREFIX}{name}"', f'"{slo_id}"')
            if datadog.SLO_REF_PREFIX in query:
                raise IntegrationError(f"monitor {m.name}: its SLO was not pushed")
            want = Monitor(**{**{k: getattr(m, k) for k in as_dict(m)}, "query": query})
            report["monitors"][m.name] = self._monitor(want, have_monitors.get(m.name))
        dash, _ = datadog.dashboards(spec, grafana_dashboards(spec))
        listed = self._by_name("list dashboards", self._listing(
            "list dashboards", lambda p: self.dashboards_api.list_dashboards(count=PAGE_SIZE, start=p * PAGE_SIZE),
            "dashboards"), name="title")
        for d in dash.values():
            have = listed.get(d.title)
            report["dashboards"][d.title] = self._dashboard(d, None if have is None else str(have["id"]))
        # Objects Flowscope made that the spec no longer generates: listed, never deleted (they may be in use).
        left = sorted(set(have_slos) - set(report["slos"])) + sorted(set(have_monitors) - set(report["monitors"]))
        if left:
            report["not_in_spec"] = left
        report["retries"] = self.retries
        return report


# --- New Relic ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewRelicConfig:
    url: str
    api_key: str = field(repr=False)
    account_id: int
    timeout_s: float = 10.0
    retry: RetryPolicy = RETRY

    @staticmethod
    def from_env(url: str | None = None, account_id: int | None = None,
                 environ: Mapping[str, str] | None = None) -> NewRelicConfig:
        """``NEW_RELIC_API_KEY[_FILE]`` (a user key) and ``NEW_RELIC_ACCOUNT_ID``."""
        env = os.environ if environ is None else environ
        raw = account_id if account_id is not None else env.get("NEW_RELIC_ACCOUNT_ID")
        try:
            acct = int(raw) if raw is not None else None
        except ValueError:
            acct = None
        if acct is None or acct <= 0:
            raise IntegrationError(f"--newrelic-account-id (or NEW_RELIC_ACCOUNT_ID) must be the account's number, "
                                   f"got {raw!r}")
        return NewRelicConfig(url=url or DEFAULT_NEWRELIC_URL, api_key=secret("NEW_RELIC_API_KEY", env),
                              account_id=acct)


def _dig(what: str, doc: Any, *path: str) -> Any:
    """``doc[path[0]][path[1]]...``, or an error naming the part of NerdGraph's answer that was not there."""
    for i, key in enumerate(path):
        if not isinstance(doc, dict) or key not in doc:
            raise IntegrationError(f"{what}: NerdGraph's answer has no {'.'.join(path[:i + 1])}")
        doc = doc[key]
    return doc


class NewRelicPusher(_Retrying):
    vendor = "New Relic"

    def __init__(self, cfg: NewRelicConfig, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None):
        super().__init__(cfg.retry, sleep, rng)
        self.cfg = cfg
        self.session = session or requests.Session()

    def _attempt(self, what: str, fn: Callable[[], T]) -> T:
        return fn()

    def graphql(self, what: str, document: str, variables: dict[str, Any]) -> dict[str, Any]:
        """One NerdGraph request under the retry policy; its ``data``, or an error naming what failed."""
        def post() -> Any:
            try:
                r = self.session.post(self.cfg.url, json={"query": document, "variables": variables},
                                      headers={"API-Key": self.cfg.api_key}, timeout=self.cfg.timeout_s)
            except requests.Timeout:
                raise SendError("timeout", reason="timeout") from None
            except requests.RequestException as e:
                raise SendError(type(e).__name__) from None
            if r.status_code in (401, 403):
                raise IntegrationError(f"{what}: New Relic answered {r.status_code}; check NEW_RELIC_API_KEY "
                                       f"(a user key of account {self.cfg.account_id})")
            if r.status_code in self.retry.retry_statuses:
                raise SendError(f"HTTP {r.status_code}", status=r.status_code,
                                retry_after=None if r.headers.get("Retry-After") is None else
                                parse_retry_after(r.headers["Retry-After"]))
            if r.status_code != 200:
                raise IntegrationError(f"{what}: New Relic answered {r.status_code}: {r.text[:300]}")
            try:
                return r.json()
            except ValueError:
                raise IntegrationError(f"{what}: NerdGraph answered with something not JSON") from None

        body = self.call(what, post)
        if not isinstance(body, dict):
            raise IntegrationError(f"{what}: NerdGraph's answer is not a JSON object")
        errors = body.get("errors")
        if errors:
            msgs = [str(e.get("message", e)) if isinstance(e, dict) else str(e)
                    for e in (errors if isinstance(errors, list) else [errors])]
            raise IntegrationError(f"{what}: NerdGraph refused it: {'; '.join(msgs)[:500]}")
        data = _dig(what, body, "data")
        if not isinstance(data, dict):
            raise IntegrationError(f"{what}: NerdGraph's answer has no data object")
        return data

    def _policy(self) -> tuple[str, str]:
        acct = self.cfg.account_id
        data = self.graphql("find policy", newrelic.FIND_POLICY, {"accountId": acct, "name": c.NEWRELIC_POLICY})
        found = _dig("find policy", data, "actor", "account", "alerts", "policiesSearch", "policies")
        for p in found if isinstance(found, list) else []:
            if isinstance(p, dict) and p.get("name") == c.NEWRELIC_POLICY and p.get("id") is not None:
                return "unchanged", str(p["id"])
        data = self.graphql("create policy", newrelic.CREATE_POLICY, {"accountId": acct, "policy": newrelic.policy()})
        return "created", str(_dig("create policy", data, "alertsPolicyCreate", "id"))

    def _conditions(self, policy_id: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        cursor = None
        for _ in range(MAX_PAGES):
            data = self.graphql("list conditions", newrelic.FIND_CONDITIONS,
                                {"accountId": self.cfg.account_id, "policyId": policy_id, "cursor": cursor})
            search = _dig("list conditions", data, "actor", "account", "alerts", "nrqlConditionsSearch")
            items = _dig("list conditions", search, "nrqlConditions")
            if not isinstance(items, list):
                raise IntegrationError("list conditions: NerdGraph's nrqlConditions is not a list")
            out.update({x["name"]: x for x in items if isinstance(x, dict) and isinstance(x.get("name"), str)})
            cursor = search.get("nextCursor")
            if not cursor:
                break
        return out

    def push(self, spec: Spec) -> dict[str, Any]:
        state, policy_id = self._policy()
        report: dict[str, Any] = {"newrelic": self.cfg.url, "policy": {c.NEWRELIC_POLICY: state}, "conditions": {}}
        have = self._conditions(policy_id)
        acct = self.cfg.account_id
        for want in newrelic.conditions(spec):
            name = want["name"]
            old = have.get(name)
            if old is None:
                data = self.graphql(f"create condition {name}", newrelic.CREATE_CONDITION,
                                    {"accountId": acct, "policyId": policy_id, "condition": want})
                _dig(f"create condition {name}", data, "alertsNrqlConditionStaticCreate", "id")
                report["conditions"][name] = "created"
            elif contains(old, want):
                report["conditions"][name] = "unchanged"
            else:
                data = self.graphql(f"update condition {name}", newrelic.UPDATE_CONDITION,
                                    {"accountId": acct, "id": old.get("id"), "condition": want})
                _dig(f"update condition {name}", data, "alertsNrqlConditionStaticUpdate", "id")
                report["conditions"][name] = "updated"
        left = sorted(set(have) - set(report["conditions"]))
        if left:
            report["not_in_spec"] = left  # listed, never deleted
        report["retries"] = self.retries
        return report

