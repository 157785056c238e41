"""The pure cores type-check under ``mypy --strict`` (issue 12, point 7).

:data:`STRICT_MODULES` is the one list of what is checked: modules with no I/O and no Flask (detection
statistics, attribution, fingerprints, the span→layer tables, metrics and their exposition, profile
folding, rule and dashboard generation). A module joins the list once it passes; the SDK joins when its
own rework is done. Imported modules outside the list are read for their types but not reported
(``follow_imports=silent``): their errors are theirs.

By hand, with the same options (``.mypy_cache`` is reused, so a second run takes about a second)::

    .venv/bin/python tests/test_types.py
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Every module checked in strict mode, relative to the repository root.
STRICT_MODULES = (
    # detection and analysis
    "backend/regression/detectors.py",
    "backend/regression/analyze.py",
    "backend/regression/sources.py",
    "backend/analysis/attribution.py",
    "backend/analysis/groups.py",
    "backend/analysis/trend.py",
    "backend/flamegraph.py",
    "backend/errors.py",
    # rules and dashboards from the spec
    "backend/rules/spec.py",
    "backend/rules/generate.py",
    "backend/rules/alertmanager.py",
    "backend/rules/promtool_tests.py",
    "backend/dashboards/common.py",
    "backend/dashboards/definitions.py",
    # the exporter's pure cores
    "exporter/conventions.py",
    "exporter/semconv.py",
    "exporter/validate.py",
    "exporter/fingerprint.py",
    "exporter/classify.py",
    "exporter/errors.py",
    "exporter/metrics.py",
    "exporter/exposition.py",
    "exporter/profiles.py",
    "exporter/resolver.py",
    "exporter/sinks.py",
    "exporter/store/rows.py",
    "exporter/model.py",
    # the SDK (the whole package), the sender it shares with the exporter, and the web error vocabulary
    "exporter/sdk",
    "exporter/worker.py",
    "exporter/retry.py",
    "exporter/web.py",
    # the multi-worker server's aggregator channel
    "exporter/prefork.py",
    # forwarding to other OTLP receivers; the Datadog and New Relic outputs
    "exporter/forward.py",
    "exporter/store/pgcopy.py",
    "exporter/store/logs.py",
    "exporter/store/endpoints.py",
    "backend/integrations",
    # the OTLP, native and browser log decoders
    "exporter/decode/otlp_logs.py",
    # the public face of the SDK
    "flowscope/__init__.py",
)

#: ``exporter/`` has no ``__init__.py``: module names come from the paths under the repository root.
MYPY_OPTIONS = (
    "--strict",
    "--explicit-package-bases",
    "--follow-imports=silent",
    "--enable-error-code=ignore-without-code",  # an ignore names the error it silences
    "--no-error-summary",
    "--show-error-codes",
    f"--cache-dir={ROOT / '.mypy_cache'}",
)


def run_mypy(*targets: str) -> tuple[int, str]:
    """(exit status, report) of mypy with :data:`MYPY_OPTIONS`, in this process, from the repository root."""
    from mypy import api

    cwd, limit = os.getcwd(), sys.getrecursionlimit()
    os.chdir(ROOT)  # --explicit-package-bases names modules from the working directory
    try:
        out, err, status = api.run([*MYPY_OPTIONS, *targets])
    finally:
        os.chdir(cwd)
        # mypy raises the interpreter's recursion limit to 16384 and leaves it there: every later test in this
        # process would then decode deeper JSON than the server does (a decoder's 400 for deep nesting flipped)
        sys.setrecursionlimit(limit)
    return status, out + err


def test_the_pure_cores_pass_mypy_strict():
    status, report = run_mypy(*STRICT_MODULES)
    assert status == 0, f"mypy --strict found errors in the pure cores:\n{report}"


def test_the_check_reports_what_strict_mode_forbids(tmp_path):
    """The check can fail: an unannotated function, a wrong return type and a bare ignore are each reported."""
    bad = tmp_path / "flowscope_types_probe.py"
    bad.write_text(textwrap.dedent("""\
        def untyped(x):
            return x


        def wrong() -> int:
            return "not an int"


        def silenced() -> int:
            return "hidden"  # type: ignore
        """))
    limit = sys.getrecursionlimit()
    status, report = run_mypy(str(bad))
    assert status == 1, report
    assert sys.getrecursionlimit() == limit  # mypy's 16384 does not leak into the tests that follow
    for code in ("no-untyped-def", "return-value", "ignore-without-code"):
        assert f"[{code}]" in report, report


if __name__ == "__main__":
    code, text = run_mypy(*STRICT_MODULES)
    print(text or f"mypy --strict: no issues in {len(STRICT_MODULES)} modules\n", end="")
    sys.exit(code)
