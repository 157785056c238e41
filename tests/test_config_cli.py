import subprocess
import sys

import pytest

from exporter.config import load_config, markdown_table
from exporter.errors import ConfigError
from flowscope.cli import main


def test_precedence_is_argument_then_environment_then_file_then_default(tmp_path):
    f = tmp_path / "flowscope.yml"
    f.write_text("port: 7000\nseries_limit: 50\nloki_url: http://file:3100\n")
    cfg = load_config({"port": 9000}, environ={"FLOWSCOPE_SERIES_LIMIT": "70", "FLOWSCOPE_CONFIG": str(f)})
    assert (cfg.port, cfg.series_limit, cfg.loki_url, cfg.max_body_bytes) == (9000, 70, "http://file:3100", 8388608)


@pytest.mark.parametrize("kw,text", [
    ({"environ": {"FLOWSCOPE_PORT": "http"}}, "environment FLOWSCOPE_PORT: invalid value for port"),
    ({"environ": {"FLOWSCOPE_BUCKETS": "0.1,0.1"}}, "invalid value for buckets"),
    ({"environ": {"FLOWSCOPE_LOKI_ENCODING": "xml"}}, "must be one of json, protobuf"),
    ({"args": {"series_limit": 0}}, "argument --series-limit: invalid value for series_limit: must be > 0"),
    ({"args": {"colour": "red"}}, "unknown setting 'colour'"),
    ({"environ": {"FLOWSCOPE_SDK_ENDPOINT": "127.0.0.1:9464"}}, "sdk_endpoint must be an http:// or https:// URL"),
])
def test_bad_settings_are_named(kw, text):
    with pytest.raises(ConfigError, match=text.replace("(", r"\(").replace(")", r"\)")):
        load_config(kw.get("args"), environ=kw.get("environ", {}))


def test_bad_config_file_names_the_key(tmp_path):
    f = tmp_path / "c.yml"
    f.write_text("prot: 1\n")
    with pytest.raises(ConfigError, match=f"config file {f}: unknown setting 'prot'"):
        load_config(environ={}, file=str(f))
    f.write_text("- a\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(environ={}, file=str(f))


def test_markdown_table_lists_every_variable():
    table = markdown_table()
    assert "`FLOWSCOPE_LOKI_URL`" in table and "`FLOWSCOPE_INGEST_TOKEN`" in table and "`FLOWSCOPE_CONFIG`" in table


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["demo", "--help"], ["config", "--help"],
                                  ["rules", "--help"], ["rules", "build", "--help"], ["rules", "test", "--help"],
                                  ["dashboards", "--help"], ["dashboards", "build", "--help"],
                                  ["dashboards", "push", "--help"], ["detect", "--help"],
                                  ["replay", "--help"]])
def test_every_command_has_help(args, cli):
    r = cli(*args)
    assert r.returncode == 0 and "usage: flowscope" in r.stdout


def test_config_errors_exit_2_and_say_why(capsys, monkeypatch):
    monkeypatch.setenv("FLOWSCOPE_PORT", "99999")
    assert main(["config"]) == 2
    assert "invalid value for port" in capsys.readouterr().err


def test_serve_on_a_busy_port_exits_1(capsys):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 1
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_readme_configuration_table_is_current():
    from pathlib import Path
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("<!-- config-table:start -->\n")[1].split("\n<!-- config-table:end -->")[0]
    assert block.strip() == markdown_table().strip(), "README config table is stale: run `flowscope config --markdown`"


@pytest.mark.parametrize("args", [["config"], ["config", "--markdown"]])
def test_a_reader_that_leaves_early_gets_no_traceback(args):
    """`flowscope config | head`: the pipe's reader is gone before we write (its end is closed here first).
    A subprocess, as the test is about the process: its exit and what the interpreter prints as it ends."""
    import os
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "flowscope.cli", *args], stdout=w, stderr=subprocess.PIPE,
                           text=True, timeout=60, check=False)
    finally:
        os.close(w)
    assert p.stderr == "" and p.returncode == 1
