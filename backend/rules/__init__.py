"""Alert rules as code: a versioned spec → Prometheus rules, promtool tests and Alertmanager routing.

Pipeline (as sloth does it): load (parse → check version → map) → validate → recording rules → alert rules.
Everything here is pure; ``flowscope rules build`` writes the files.
"""
