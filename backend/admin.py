"""Who may call admin endpoints (provisioning, detection now, resolving error groups)."""

from __future__ import annotations

import ipaddress

from flask import request

from exporter.web import HttpError, bearer_ok


def is_loopback(addr: str | None) -> bool:
    """Is ``addr`` this host: all of 127.0.0.0/8, ``::1``, and IPv4-mapped ``::ffff:127.x.y.z``?

    ``is_loopback("127.0.0.2")`` is True; a host name, an empty or a malformed address is not loopback.
    """
    try:
        ip = ipaddress.ip_address((addr or "").split("%", 1)[0])  # drop an IPv6 zone ("::1%lo")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def require_admin(cfg, action: str) -> None:
    """With FLOWSCOPE_ADMIN_TOKEN set, require it as a bearer token; unset, only loopback callers."""
    if cfg.admin_token:
        if not bearer_ok(cfg.admin_token):
            raise HttpError(401, "unauthorized", f"{action} requires Authorization: Bearer <FLOWSCOPE_ADMIN_TOKEN>",
                            headers={"WWW-Authenticate": 'Bearer realm="flowscope-admin"'})
    elif not is_loopback(request.remote_addr):
        raise HttpError(403, "forbidden", f"set FLOWSCOPE_ADMIN_TOKEN to allow {action} from another host")
