"""Who may call admin endpoints (provisioning, detection now)."""

from __future__ import annotations

from flask import request

from exporter.http import HttpError, bearer_ok

LOOPBACK = ("127.0.0.1", "::1")


def require_admin(cfg, action: str) -> None:
    """With FLOWSCOPE_ADMIN_TOKEN set, require it as a bearer token; unset, only loopback callers."""
    if cfg.admin_token:
        if not bearer_ok(cfg.admin_token):
            raise HttpError(401, "unauthorized", f"{action} requires Authorization: Bearer <FLOWSCOPE_ADMIN_TOKEN>",
                            headers={"WWW-Authenticate": 'Bearer realm="flowscope-admin"'})
    elif request.remote_addr not in LOOPBACK:
        raise HttpError(403, "forbidden", f"set FLOWSCOPE_ADMIN_TOKEN to allow {action} from another host")
