"""The web error vocabulary every Flowscope endpoint speaks, exporter and backend alike.

A refusal is an :class:`HttpError`; the app turns it into JSON ``{"error": {"code", "message",
"field"?}}`` with its 4xx status (:func:`error_response`). Request helpers shared by every view
that takes a body or a token live here too, so no blueprint imports another's module.
"""

from __future__ import annotations

import hmac
import zlib
from collections.abc import Mapping

import orjson
from flask import Response, request


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: Mapping[str, str] | None = None) -> Response:
    err = {"code": code, "message": message}
    if field:
        err["field"] = field
    return Response(orjson.dumps({"error": err}), status=status, mimetype="application/json", headers=headers)


def bearer_ok(token: str) -> bool:
    """Does this request carry ``Authorization: Bearer <token>``? (constant-time compare)"""
    got = request.headers.get("Authorization", "")
    return got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), token.encode())


def read_body(limit: int) -> bytes:
    """The request body, gunzipped if needed, refusing anything over ``limit`` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise HttpError(413, "too_large", f"body of {length} bytes exceeds the limit of {limit} bytes")
    # Read exactly Content-Length when it is known (no limit-sized buffer per request).
    raw = request.stream.read(length if length is not None else limit + 1)
    if len(raw) > limit:
        raise HttpError(413, "too_large", f"body exceeds the limit of {limit} bytes")
    enc = (request.headers.get("Content-Encoding") or "identity").lower().strip()
    if enc == "gzip":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = d.decompress(raw, limit + 1)
        except zlib.error as e:
            raise HttpError(400, "malformed_body", f"body is not valid gzip: {e}") from None
        if len(out) > limit or d.unconsumed_tail:
            raise HttpError(413, "too_large", f"decompressed body exceeds the limit of {limit} bytes")
        if not d.eof:
            raise HttpError(400, "malformed_body", "gzip body is truncated")
        return out
    if enc != "identity":
        raise HttpError(415, "unsupported_encoding", f"Content-Encoding {enc!r} is not supported; use gzip",
                        field="Content-Encoding")
    return raw
