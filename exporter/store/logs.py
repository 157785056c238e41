"""Application log lines in the store: their rows, their full-text index, and the reads that search them.

Being written (issue 14): ``log_row`` and ``insert_logs`` are the write path's contract with
:meth:`~exporter.store.recorder.RunWriter.write`.
"""

from __future__ import annotations

from typing import Any

from ..model import LogLine
from ..redact import Redactor


def log_row(line: LogLine, redactor: Redactor) -> dict[str, Any]:
    raise NotImplementedError("the log store is not written yet")


def insert_logs(conn: Any, rows: list[dict[str, Any]]) -> None:
    raise NotImplementedError("the log store is not written yet")
