"""Grafana dashboards as code, with grafana-foundation-sdk; ``flowscope dashboards build`` writes them."""
