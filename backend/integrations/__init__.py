"""Datadog and New Relic from the same metrics and the same alert spec as Prometheus and Grafana.

``flowscope integrations build`` writes, into ``integrations/``:

- ``datadog/conf.d/openmetrics.d/conf.yaml`` and ``newrelic/prometheus-agent.yml``: how each tool reads
  ``/metrics`` (:mod:`.scrape`);
- Datadog monitors, SLOs and dashboards built with the typed models of ``datadog-api-client``
  (:mod:`.datadog`), New Relic NRQL conditions as NerdGraph mutation documents (:mod:`.newrelic`);
- ``UNMAPPED.md``: what has no equivalent in each tool, and why.

``flowscope integrations push --datadog|--newrelic`` sends them (:mod:`.push`), idempotently.
Everything but :mod:`.push` is pure: a function of the spec and the conventions.
"""

from __future__ import annotations

from ..provision import ProvisionError


class IntegrationError(ProvisionError):
    """A vendor API refused a request in a way retrying cannot fix, or a key is missing.

    A :class:`~backend.provision.ProvisionError`, so the CLI and the retry rules treat it as Grafana's."""


__all__ = ["IntegrationError"]
