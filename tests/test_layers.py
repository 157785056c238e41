"""The layers hold: import-linter's contracts in pyproject.toml ([tool.importlinter]) are kept.

The command line (``flowscope.cli``) sits above the backend, the backend above the exporter; the exporter
never imports the backend; ``import flowscope`` and the SDK's modules import no web framework, no backend
and no SQLAlchemy.
"""

import logging
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _keep_logging():
    """import-linter configures logging with dictConfig, which disables every logger that exists: restore them."""
    loggers = [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    before = [(lg, lg.disabled, lg.level, list(lg.handlers)) for lg in loggers]
    root = (logging.root.level, list(logging.root.handlers))
    yield
    for lg, disabled, level, handlers in before:
        lg.disabled, lg.level, lg.handlers[:] = disabled, level, handlers
    logging.root.level, logging.root.handlers[:] = root[0], root[1]


def test_the_import_contracts_are_kept(monkeypatch):
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0, \
        "an import crosses a layer: run `.venv/bin/lint-imports` to see which"


def test_a_crossing_import_breaks_the_contract(tmp_path, monkeypatch):
    """The check can fail: the layers stacked the other way round are broken by the backend's imports."""
    from importlinter.cli import lint_imports

    text = (ROOT / "pyproject.toml").read_text()
    strict = text.replace('layers = ["flowscope.cli", "backend", "exporter"]',
                          'layers = ["flowscope.cli", "exporter", "backend"]')
    assert strict != text
    (tmp_path / "pyproject.toml").write_text(strict)
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(tmp_path / "pyproject.toml"), no_cache=True) == 1
