"""The backend's one Flask extension object, and the typed accessors every view uses.

:func:`backend.app.create_app` builds one :class:`Flowscope` (the exporter, the alert store, the regression
service and the services the app needs running) and binds it with :meth:`Flowscope.init_app`; views read it
through :func:`current_flowscope`, never through ``app.extensions`` (as Flask's docs on extensions do)::

    cfg = current_flowscope().config                  # in a view
    current_flowscope(app).regressions.run_once()     # outside a request: name the app

The exporter's own blueprint does not know this object: it reads its :class:`~exporter.runtime.Exporter`
through :func:`exporter.http.current_exporter`, which :meth:`Flowscope.init_app` binds too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import Flask, current_app

from exporter import http as exporter_http
from exporter.config import Config
from exporter.runtime import Exporter, Service
from exporter.store import RunStore
from exporter.web import HttpError

from .regression.service import RegressionService
from .store import AlertStore

#: The key of the app's :class:`Flowscope` in ``app.extensions``; read it through :func:`current_flowscope`.
EXTENSION = "flowscope"


@dataclass
class Flowscope:
    """What the backend's views need: one per app."""

    exporter: Exporter
    alerts: AlertStore
    regressions: RegressionService
    #: What the app needs running beside it, in start order (see :func:`backend.app.services`).
    services: list[Service] = field(default_factory=list)

    @property
    def config(self) -> Config:
        return self.exporter.config

    @property
    def runs(self) -> RunStore | None:
        """The run store, or None when it is off (``FLOWSCOPE_RUN_STORE=false``); views use :func:`run_store`."""
        return self.exporter.runs

    def init_app(self, app: Flask) -> None:
        """Bind this object, and its exporter for the exporter's blueprint, to ``app``."""
        app.extensions[EXTENSION] = self
        exporter_http.init_app(app, self.exporter)


def current_flowscope(app: Flask | None = None) -> Flowscope:
    """The :class:`Flowscope` of ``app`` (default: the app handling this request)."""
    ext: Flowscope = (current_app if app is None else app).extensions[EXTENSION]
    return ext


def run_store() -> RunStore:
    """The run store of the app handling this request; 404 ``run_store_disabled`` when it is off."""
    store = current_flowscope().runs
    if store is None:
        raise HttpError(404, "run_store_disabled", "the run store is off (FLOWSCOPE_RUN_STORE=false)")
    return store
