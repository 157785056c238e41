"""Spec routing → ``alertmanager.yml`` (pure).

Routes by severity, grouped by alertname and workflow; critical inhibits
warning for the same alertname/workflow/layer; the default receiver is the
backend's webhook, and every severity receiver includes it too, so the backend
records every alert. Slack, e-mail and PagerDuty are added when the spec's
``routing`` switches them on; their secrets are referenced as files only.
"""

from __future__ import annotations

from typing import Any

from exporter import conventions as c

from .spec import Routing

WEBHOOK = "flowscope-webhook"
CRITICAL = "flowscope-critical"
WARNING = "flowscope-warning"


def _webhook(r: Routing) -> dict[str, Any]:
    cfg: dict[str, Any] = {"url": r.webhook_url, "send_resolved": True}
    if r.webhook_credentials_file:
        cfg["http_config"] = {"authorization": {"type": "Bearer", "credentials_file": r.webhook_credentials_file}}
    elif r.webhook_username:
        cfg["http_config"] = {"basic_auth": {"username": r.webhook_username,
                                             "password_file": r.webhook_password_file}}
    return cfg


def _integrations(r: Routing, severity: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"webhook_configs": [_webhook(r)]}
    if r.slack:
        rec["slack_configs"] = [{"send_resolved": True, **r.slack}]
    if r.email:
        rec["email_configs"] = [{"send_resolved": True, **r.email}]
    if r.pagerduty and severity == c.SEVERITY_CRITICAL:
        rec["pagerduty_configs"] = [{"send_resolved": True, **r.pagerduty}]
    return rec


def alertmanager_config(r: Routing) -> dict[str, Any]:
    return {
        "route": {
            "receiver": WEBHOOK,
            "group_by": ["alertname", c.L_WORKFLOW],
            "group_wait": r.group_wait,
            "group_interval": r.group_interval,
            "repeat_interval": r.repeat_interval,
            "routes": [
                {"matchers": [f'{c.L_SEVERITY}="{c.SEVERITY_CRITICAL}"'], "receiver": CRITICAL},
                {"matchers": [f'{c.L_SEVERITY}="{c.SEVERITY_WARNING}"'], "receiver": WARNING},
            ],
        },
        "inhibit_rules": [{
            "source_matchers": [f'{c.L_SEVERITY}="{c.SEVERITY_CRITICAL}"'],
            "target_matchers": [f'{c.L_SEVERITY}="{c.SEVERITY_WARNING}"'],
            "equal": ["alertname", c.L_WORKFLOW, c.L_LAYER],
        }],
        "receivers": [
            {"name": WEBHOOK, "webhook_configs": [_webhook(r)]},
            {"name": CRITICAL, **_integrations(r, c.SEVERITY_CRITICAL)},
            {"name": WARNING, **_integrations(r, c.SEVERITY_WARNING)},
        ],
    }
