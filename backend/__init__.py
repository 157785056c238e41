"""Flowscope's backend: the Flask app that serves the exporter, health and the API.

``create_app`` is imported on first use, so the pure parts (``backend.regression``,
``backend.analysis``) load without Flask and the whole app: ``flowscope detect`` starts fast.
"""

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
