"""Pure decoders: request bodies in, :class:`~exporter.model.Span` lists out.

Each returns a :class:`DecodeResult`: the spans that are valid, and a count per
reason of those that are not. A body that can't be read at all raises
:class:`~exporter.errors.DecodeError` and nothing of it is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model import ErrorRecord, Span


@dataclass(slots=True)
class Rejection:
    index: int
    reason: str
    detail: str


@dataclass(slots=True)
class DecodeResult:
    spans: list[Span] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    errors: list[ErrorRecord] = field(default_factory=list)  # native ``errors`` records (ErrorLogger)
    #: names cut to the label cap and nested values cut to the depth/size caps (kept, and counted)
    truncated: int = 0

    def reject(self, index: int, reason: str, detail: str) -> None:
        self.rejected.append(Rejection(index, reason, detail))

    def summary(self, limit: int = 5) -> str:
        """One human-readable line about the rejections, for OTLP's errorMessage."""
        if not self.rejected:
            return ""
        parts = [f"span {r.index}: {r.detail}" for r in self.rejected[:limit]]
        more = len(self.rejected) - limit
        return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


__all__ = ["DecodeResult", "Rejection"]
