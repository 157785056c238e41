"""Flowscope's backend: the Flask app that serves the exporter, health and the API."""

from .app import create_app

__all__ = ["create_app"]
