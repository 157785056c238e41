"""An error group's status and what to try first (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exporter.classify import suggestion_for


def status_of(g: Mapping[str, Any]) -> str:
    """open, resolved (no error of it has started a failure since the last resolution) or regressed (one has).

    Only an error that starts a failure (an origin) regresses its group: a caller's generic 502 that
    failed because of some other, new exception is that exception's symptom, and the 502's old fix
    would be the wrong advice. The run store sets ``regressed_at_ns`` (``RunStore._write_errors``).
    """
    if g.get("regressed_at_ns"):
        return "regressed"
    if g.get("resolved_at_ns"):
        return "resolved"
    return "open"


def suggestions(g: Mapping[str, Any], resolutions: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Earlier resolution notes first (newest first), then the knowledge base's advice for the category."""
    out = [{"source": "resolution", "note": r["note"], "resolved_by": r.get("resolved_by"),
            "resolved_at_ns": r["resolved_at_ns"]} for r in resolutions]
    kb = suggestion_for(g["category"])
    if kb:
        out.append({"source": "knowledge_base", "category": g["category"], "note": kb})
    return out
