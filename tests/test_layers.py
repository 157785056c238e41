"""The layers hold: import-linter's contracts in pyproject.toml ([tool.importlinter]) are kept.

The exporter never imports the backend (the command line, which sits above both, is the one named
exception until it moves out of exporter/), and the SDK's modules import no web framework.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_are_kept(monkeypatch):
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0, \
        "an import crosses a layer: run `.venv/bin/lint-imports` to see which"


def test_a_crossing_import_breaks_the_contract(tmp_path, monkeypatch):
    """The check can fail: the same contract without its one exception is broken by the command line's imports."""
    from importlinter.cli import lint_imports

    text = (ROOT / "pyproject.toml").read_text()
    strict = text.replace('    "exporter.cli -> backend.**",\n', "")
    assert strict != text
    (tmp_path / "pyproject.toml").write_text(strict)
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(tmp_path / "pyproject.toml"), no_cache=True) == 1
