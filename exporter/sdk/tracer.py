"""In-process workflow tracing: the seed API, context managers and ``@traced``.

Both styles work::

    tracer = WorkflowTracer()                      # instance style
    cid = tracer.start_workflow("checkout", user="u-42")
    sid = tracer.add_trace_step(cid, "database", "postgres", "insert_order", state={"cart": 3})
    tracer.complete_trace_step(sid, state={"order_id": 7})
    tracer.complete_workflow(cid)

    cid = WorkflowTracer.start_workflow("login")   # static style: the default tracer

    with tracer.workflow("checkout") as run:       # context managers
        with tracer.step("cache", "redis", "get_cart"):
            ...

    @traced("api", "orders")                        # sync or async
    async def create_order(...): ...

A step costs the app about 1.7 us here, aggregation included, and 2.6-2.8 us of
its CPU with the run store on, its row handed to the writer process (see
``bench/sdk_overhead.py``): a slotted object, a span id made in C, two ``time_ns``
calls, one context-var set/reset, one locked histogram update and a tuple queued
for the store (its run pickles as :class:`RunIds`, so the tuple can cross to the
writer process as it is and have its row built there).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import os
import threading
import traceback
import types
import uuid
from collections import OrderedDict
from collections.abc import Callable
from contextvars import Token
from random import getrandbits
from time import time_ns
from typing import TYPE_CHECKING, Any, Concatenate, Generic, Literal, NamedTuple, ParamSpec, TypeVar, cast

from .. import conventions as c
from ..config import load_config
from ..decode.native import root_span_id_for, trace_id_for
from ..model import Span, hash_user
from .context import current_request, current_step

if TYPE_CHECKING:
    from .profiler import SamplingProfiler
    from .sinks import SdkSink, StepTuple

P = ParamSpec("P")
R = TypeVar("R")
#: the run (or step) a context holds: (run, span_id of the innermost open step or of the run)
_Current = tuple["_Run", str]

# Span IDs only need to be unique: a counter from a random 63-bit start is unique in
# this process and collides across processes with negligible odds, at half the
# cost of formatting fresh random bits. It starts in [2**62, 2**63), so every id is
# 16 hex digits and never zero (2**64 is 3 * 2**62 steps away). Formatting in a
# map() makes the whole call C code (about 90 ns, against 185 for an f-string in a
# function); one C call is atomic under the GIL, like next() on the count alone.
_span_id: Callable[[], str]


def _new_span_ids() -> None:
    """Start the counter afresh. Also in a forked child (``random`` reseeds itself there first): it would go on
    with its parent's count, and steps the two record in one run would store under one id, one of them lost."""
    global _span_id
    _span_id = map("%016x".__mod__, itertools.count(getrandbits(62) | (1 << 62))).__next__


_new_span_ids()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_span_ids)


def _status_of(exc_type: type[BaseException] | None) -> str:
    if exc_type is None:
        return "ok"
    if issubclass(exc_type, TimeoutError):
        return "timeout"
    if exc_type.__name__ in ("CancelledError",):
        return "cancelled"
    return "error"


def _norm_status(status: str) -> str:
    """The status word (one table for the SDK and native JSON: ``conventions.STATUS_ALIASES``)."""
    try:
        return c.STATUS_ALIASES[status.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"status must be one of {sorted(c.STATUS_ALIASES)}, got {status!r}") from None


class RunIds(NamedTuple):
    """What a stored row needs of a run, and all of it that leaves the process: a run pickles as this.

    The in-process SDK hands a plain successful step to the run store as a fast-path tuple holding its run
    (:data:`exporter.sinks.FastStep`). A batch of them pickled for the store's writer process carries each run
    as these four strings, once per batch however many steps it holds, and the writer process can build the
    rows from them, so the app pays only the pickle. A run's metadata and per-run state never leave the app.
    Example: ``pickle.loads(pickle.dumps(run)).correlation_id == run.correlation_id``.
    """

    correlation_id: str
    trace_id: str
    workflow: str
    service: str


class _Run:
    __slots__ = (
        "closed",
        "correlation_id",
        "extras",
        "memory",
        "metadata",
        "parent_span_id",
        "service",
        "span_id",
        "start_ns",
        "trace_id",
        "user",
        "workflow",
    )

    def __init__(self, workflow: str, correlation_id: str, trace_id: str, parent_span_id: str | None,
                 user: str | None, metadata: dict[str, Any] | None, service: str):
        self.workflow = workflow
        self.correlation_id = correlation_id
        self.trace_id = trace_id
        self.span_id = _span_id()
        self.parent_span_id = parent_span_id
        self.start_ns = time_ns()
        self.user = hash_user(user)
        self.metadata = metadata
        self.service = service
        self.extras: dict[str, Any] | None = None  # per-run state of instrumentations (statement counts for N+1)
        #: traced by the profiler's tracemalloc: its steps record their memory growth
        self.memory = False
        #: completed or evicted: a context that still holds it (it was completed from another thread or
        #: task, or never) treats it as no run, so an unrelated step never joins a finished run
        self.closed = False

    def __reduce__(self) -> tuple[type[RunIds], tuple[str, str, str, str]]:
        """Pickled as its :class:`RunIds` (the fields of a stored row), never with its metadata or state."""
        return RunIds, (self.correlation_id, self.trace_id, self.workflow, self.service)


class _OpenStep:
    __slots__ = ("component", "layer", "mem0", "metadata", "operation", "parent", "run", "span_id", "start_ns",
                 "state")

    # no values: the names stay slots
    component: str
    layer: str
    mem0: int | None
    metadata: dict[str, Any] | None
    operation: str
    parent: str
    run: _Run
    span_id: str
    start_ns: int
    state: dict[str, Any] | None


class hybridmethod(Generic[P, R]):
    """A method that runs on the instance, or on the default instance when called on the class."""

    def __init__(self, fn: Callable[Concatenate[WorkflowTracer, P], R]):
        self.fn = fn
        # a descriptor, not a callable: update_wrapper only copies fn's name, docstring and __wrapped__ onto it
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __get__(self, obj: WorkflowTracer | None, cls: type[WorkflowTracer]) -> Callable[P, R]:
        return types.MethodType(self.fn, obj if obj is not None else cls.default())  # what fn.__get__ makes


class StepScope:
    """``with tracer.step(...)``: times the block; an exception marks it failed and propagates."""

    __slots__ = (
        "_component",
        "_failure",
        "_layer",
        "_mem0",
        "_metadata",
        "_operation",
        "_parent",
        "_run",
        "_start",
        "_token",
        "_tracer",
        "span_id",
        "state",
    )

    # set by __enter__ (no values: the names stay slots)
    _run: _Run
    _parent: str
    _start: int
    _token: Token[_Current | None]
    span_id: str

    def __init__(self, tracer: WorkflowTracer, layer: str, component: str, operation: str,
                 metadata: dict[str, Any] | None = None, state: dict[str, Any] | None = None):
        self._tracer = tracer
        self._layer = layer
        self._component = component
        self._operation = operation
        self._metadata = metadata
        self.state = state
        self._failure: tuple[str, str, str | None] | None = None

    def __enter__(self) -> StepScope:
        cur = current_step.get()
        if cur is None or cur[0].closed:
            run = self._tracer._implicit_run()
            parent = run.span_id
        else:
            run, parent = cur
        self._run = run
        self._parent = parent
        self.span_id = sid = _span_id()
        self._token = current_step.set((run, sid))
        self._mem0 = self._tracer._memory_now(run) if run.memory else None
        self._start = time_ns()
        return self

    def fail(self, error_type: str, message: str | None = None, status: str = "error") -> None:
        """Mark the step failed without raising (e.g. a handled HTTP 503 from a dependency)."""
        self._failure = (_norm_status(status), error_type, message)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: types.TracebackType | None) -> Literal[False]:
        end = time_ns()
        current_step.reset(self._token)
        run = self._run
        if self._mem0 is not None:
            self._metadata = self._tracer._with_growth(self._metadata, self._mem0, run)
        if et is None and self._failure is None and self._metadata is None and self.state is None:
            offer = self._tracer._offer_step
            if offer is not None:  # remote: a tuple, queued without a lock; the sender thread encodes it
                offer((run, self._layer, self._component, self._operation, self._start, end, self.span_id,
                       self._parent))
                return False
            pipeline = self._tracer._sink.pipeline
            if pipeline is not None and pipeline.metrics_only:
                # Metrics-only pipeline: no Span object is needed for a successful step.
                pipeline.fast_step(run, self._layer, self._component, self._operation, self._start, end,
                                   self.span_id, self._parent)
                return False
        status = "ok"
        etype: str | None = None
        emsg: str | None = None
        stack: str | None = None
        if self._failure is not None:
            status, etype, emsg = self._failure
        if et is not None:
            status = _status_of(et) if self._failure is None else status
            etype = etype or et.__name__
            emsg = emsg or str(ev)
            stack = "".join(traceback.format_exception(et, ev, tb))
        self._tracer._sink.emit(Span(trace_id=run.trace_id, span_id=self.span_id, workflow=run.workflow,
                                     layer=self._layer, component=self._component, operation=self._operation,
                                     start_ns=self._start, end_ns=end, status=status, parent_span_id=self._parent,
                                     correlation_id=run.correlation_id, service=run.service, error_type=etype,
                                     error_message=emsg, attributes=self._metadata, state=self.state,
                                     stack_trace=stack))
        return False


class WorkflowScope:
    """``with tracer.workflow(...)``: starts a run, completes or fails it on exit."""

    def __init__(self, tracer: WorkflowTracer, workflow_type: str, correlation_id: str | None, user: str | None,
                 metadata: dict[str, Any] | None):
        self._tracer = tracer
        self._args = (workflow_type, correlation_id, user, metadata)
        #: the run's correlation_id, once the block is entered
        self.correlation_id: str | None = None

    def __enter__(self) -> WorkflowScope:
        self.correlation_id = self._tracer.start_workflow(*self._args)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: types.TracebackType | None) -> Literal[False]:
        t = self._tracer
        cid = self.correlation_id
        assert cid is not None  # __enter__ set it: __exit__ runs only after __enter__ returned
        if et is None:
            t.complete_workflow(cid)
        else:
            t.fail_workflow(cid, ev, status=_status_of(et))
        return False


class WorkflowTracer:
    """Traces workflow runs and their steps into a sink (in-process pipeline or remote exporter)."""

    _default: WorkflowTracer | None = None
    _default_lock = threading.Lock()
    MAX_OPEN = 10_000

    def __init__(self, sink: SdkSink | None = None, service: str | None = None,
                 profiler: SamplingProfiler | Literal[False] | None = None):
        if sink is None:
            from . import default_sink
            sink = default_sink()
        self._sink = sink
        #: the remote sink's hot path for a plain successful step (RemoteSink.offer_step), or None
        self._offer_step: Callable[[StepTuple], object] | None = getattr(sink, "offer_step", None)
        self.service = service or _default_service()
        #: a SamplingProfiler, or None; by default one when FLOWSCOPE_PROFILE_WORKFLOWS names workflows
        #: (``profiler=False``: never)
        self.profiler: SamplingProfiler | None = _default_profiler() if profiler is None else (profiler or None)
        self._runs: OrderedDict[str, tuple[_Run, Token[_Current | None]]] = OrderedDict()
        self._steps: OrderedDict[str, _OpenStep] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0
        # Bind the hybrid methods on the instance: an instance attribute beats the
        # class's descriptor, so ``tracer.step`` costs a dict lookup, not a Python call.
        for name, attr in vars(WorkflowTracer).items():
            if isinstance(attr, hybridmethod):
                setattr(self, name, types.MethodType(attr.fn, self))
        # The hot path: a C-level partial straight into StepScope, no Python frame in between.
        self.step = functools.partial(StepScope, self)

    @classmethod
    def default(cls) -> WorkflowTracer:
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls()
            return cls._default

    @classmethod
    def set_default(cls, tracer: WorkflowTracer | None) -> None:
        with cls._default_lock:
            cls._default = tracer

    # -- seed API ---------------------------------------------------------------------------

    @hybridmethod
    def start_workflow(self, workflow_type: str, correlation_id: str | None = None, user: str | None = None,
                       metadata: dict[str, Any] | None = None) -> str:
        """Start a run and make it current in this context; returns its correlation_id.

        The run stays current until :meth:`complete_workflow` (or :meth:`fail_workflow`): call it in a
        ``finally``, or use ``with tracer.workflow(...)``, which does. If this call raises, nothing is left
        behind: no current run, no open run, no in-progress count.
        """
        if not isinstance(workflow_type, str) or not workflow_type:
            raise ValueError(f"workflow_type must be a non-empty string, got {workflow_type!r}")
        req = current_request.get()
        trace_id: str | None = None
        parent: str | None = None
        if req is not None:
            correlation_id = correlation_id or req.correlation_id
            trace_id, parent = req.trace_id, req.parent_span_id
        correlation_id = correlation_id or uuid.uuid4().hex
        if trace_id is None:
            trace_id = trace_id_for(correlation_id)
        run = _Run(workflow_type, correlation_id, trace_id, parent, user, metadata, self.service)
        if self._sink.pipeline is None:
            # Remote: the server names a run's envelope root_span_id_for(correlation_id) (a workflow record
            # carries no span_id in native JSON), so its steps must hang off that id to make one tree.
            run.span_id = root_span_id_for(correlation_id)
        # Everything that can raise comes before the run is registered and made current: a start that
        # fails must not leave a run that the next, unrelated step on this thread would join.
        self._sink.started(workflow_type)
        profiler = self.profiler
        if profiler is not None and profiler.wants(workflow_type):
            try:
                run.memory = profiler.start_run(correlation_id, workflow_type)
            except BaseException:
                self._sink.ended(workflow_type)
                raise
        token = current_step.set((run, run.span_id))
        evicted = None
        with self._lock:
            self._runs[correlation_id] = (run, token)
            if len(self._runs) > self.MAX_OPEN:
                evicted = self._runs.popitem(last=False)[1][0]
                evicted.closed = True
                self.evicted += 1
        if evicted is not None:  # a run never completed: it is no longer in progress
            self._sink.ended(evicted.workflow)
        return correlation_id

    @hybridmethod
    def add_trace_step(self, correlation_id: str, layer: str, component: str, operation: str,
                       metadata: dict[str, Any] | None = None, state: dict[str, Any] | None = None,
                       parent_step_id: str | None = None) -> str:
        """Open a step of a started run; returns its step_id (a span_id)."""
        run = self._run(correlation_id)
        st = _OpenStep()
        st.run, st.span_id, st.parent = run, _span_id(), parent_step_id or run.span_id
        st.layer, st.component, st.operation = layer, component, operation
        st.mem0 = self._memory_now(run) if run.memory else None
        st.start_ns, st.metadata, st.state = time_ns(), metadata, state
        with self._lock:
            self._steps[st.span_id] = st
            if len(self._steps) > self.MAX_OPEN:
                self._steps.popitem(last=False)
                self.evicted += 1
        return st.span_id

    @hybridmethod
    def complete_trace_step(self, step_id: str, status: str = "success", error_type: str | None = None,
                            error_message: str | None = None, state: dict[str, Any] | None = None,
                            metadata: dict[str, Any] | None = None) -> None:
        status = _norm_status(status)  # before the pop: a bad status must not lose the step
        with self._lock:
            st = self._steps.pop(step_id, None)
        if st is None:
            raise KeyError(f"unknown or already completed step {step_id!r}")
        if status in c.FAILED_STATUSES and not error_type:
            error_type = status
        run = st.run
        meta = {**(st.metadata or {}), **(metadata or {})} or None
        if st.mem0 is not None:
            meta = self._with_growth(meta, st.mem0, run)
        self._sink.emit(Span(trace_id=run.trace_id, span_id=st.span_id, workflow=run.workflow, layer=st.layer,
                             component=st.component, operation=st.operation, start_ns=st.start_ns, end_ns=time_ns(),
                             status=status, parent_span_id=st.parent, correlation_id=run.correlation_id,
                             service=run.service, error_type=error_type, error_message=error_message, attributes=meta,
                             state=state if state is not None else st.state))

    @hybridmethod
    def complete_workflow(self, correlation_id: str, status: str = "success", metadata: dict[str, Any] | None = None,
                          error_type: str | None = None, error_message: str | None = None) -> None:
        status = _norm_status(status)
        with self._lock:
            entry = self._runs.pop(correlation_id, None)
        if entry is None:
            raise KeyError(f"unknown or already completed workflow {correlation_id!r}")
        run, token = entry
        run.closed = True
        try:
            current_step.reset(token)
        except ValueError:  # completed from another context: nothing to restore there
            pass
        if status in c.FAILED_STATUSES and not error_type:
            error_type = status
        meta = {**(run.metadata or {}), **(metadata or {})} or None
        self._sink.emit(Span(trace_id=run.trace_id, span_id=run.span_id, workflow=run.workflow, layer="system",
                             component="workflow", operation=run.workflow, start_ns=run.start_ns, end_ns=time_ns(),
                             status=status, parent_span_id=run.parent_span_id, correlation_id=run.correlation_id,
                             service=run.service, error_type=error_type, error_message=error_message, attributes=meta,
                             is_step=False, user=run.user))
        self._sink.ended(run.workflow)
        profiler = self.profiler
        if profiler is not None and profiler.wants(run.workflow):
            for profile in profiler.finish_run(correlation_id, run.workflow):
                self._sink.profile(profile)

    @hybridmethod
    def fail_workflow(self, correlation_id: str, error: BaseException | str | None = None,
                      error_type: str | None = None, status: str = "error") -> None:
        message: str | None
        if isinstance(error, BaseException):
            error_type = error_type or type(error).__name__
            message = str(error)
        else:
            message = error
        self.complete_workflow(correlation_id, status=status, error_type=error_type or status,
                               error_message=message)

    # -- context managers and decorator -----------------------------------------------------------

    @hybridmethod
    def workflow(self, workflow_type: str, correlation_id: str | None = None, user: str | None = None,
                 metadata: dict[str, Any] | None = None) -> WorkflowScope:
        return WorkflowScope(self, workflow_type, correlation_id, user, metadata)

    @hybridmethod
    def step(self, layer: str, component: str, operation: str, metadata: dict[str, Any] | None = None,
             state: dict[str, Any] | None = None) -> StepScope:
        return StepScope(self, layer, component, operation, metadata, state)

    def record_step(self, layer: str, component: str, operation: str, start_ns: int, end_ns: int,
                    attributes: dict[str, Any] | None = None, error: BaseException | None = None) -> str:
        """Record a step that was timed elsewhere (an instrumentation's callback) in the current run."""
        cur = current_step.get()
        if cur is None or cur[0].closed:
            run = self._implicit_run()
            parent = run.span_id
        else:
            run, parent = cur
        status = "ok"
        etype: str | None = None
        emsg: str | None = None
        if error is not None:
            status, etype, emsg = _status_of(type(error)), type(error).__name__, str(error)
        sid = _span_id()
        self._sink.emit(Span(trace_id=run.trace_id, span_id=sid, workflow=run.workflow, layer=layer,
                             component=component, operation=operation, start_ns=start_ns, end_ns=end_ns, status=status,
                             parent_span_id=parent, correlation_id=run.correlation_id, service=run.service,
                             error_type=etype, error_message=emsg, attributes=attributes))
        return sid

    def _memory_now(self, run: _Run) -> int | None:
        """Bytes traced now, for a step of ``run`` while the profiler traces it."""
        return self.profiler.memory_now(run.correlation_id) if self.profiler is not None else None

    def _with_growth(self, metadata: dict[str, Any] | None, start_bytes: int, run: _Run) -> dict[str, Any] | None:
        """A traced step's attributes with its memory growth (bytes traced now less at its start), while the
        profiler still traces its run (not once another run is traced: its bytes are not this step's)."""
        growth = self.profiler.step_growth(start_bytes, run.correlation_id) if self.profiler is not None else None
        return metadata if growth is None else {**(metadata or {}), c.ATTR_MEMORY_GROWTH: growth}

    def _run(self, correlation_id: str) -> _Run:
        with self._lock:
            entry = self._runs.get(correlation_id)
        if entry is None:
            raise KeyError(f"unknown or already completed workflow {correlation_id!r}")
        return entry[0]

    def _implicit_run(self) -> _Run:
        """A step outside any workflow belongs to the request's correlation ID, or to 'unknown'."""
        req = current_request.get()
        cid = req.correlation_id if req else uuid.uuid4().hex
        return _Run(c.UNKNOWN_WORKFLOW, cid, (req.trace_id if req and req.trace_id else trace_id_for(cid)),
                    req.parent_span_id if req else None, None, None, self.service)


def _default_profiler() -> SamplingProfiler | None:
    try:
        cfg = load_config()
    except Exception:  # noqa: BLE001 a bad setting must not stop the host app; the profiler stays off
        return None
    if not (cfg.profile_workflows or cfg.memory_profile_workflows):
        return None
    from .profiler import SamplingProfiler
    return SamplingProfiler(cfg.profile_hz, cfg.profile_workflows, memory_workflows=cfg.memory_profile_workflows,
                            memory_budget=cfg.memory_profile_budget)


def _default_service() -> str:
    try:
        return load_config().service_name
    except Exception:  # noqa: BLE001 a bad setting must not stop the host app
        return "flowscope"


def traced(layer: str, component: str, operation: str | None = None,
           tracer: WorkflowTracer | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: run the function as a step. Works on sync and async functions."""

    def deco(fn: Callable[P, R]) -> Callable[P, R]:
        op = operation or fn.__qualname__

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def awrapper(*a: P.args, **kw: P.kwargs) -> object:
                with (tracer or WorkflowTracer.default()).step(layer, component, op):
                    return await fn(*a, **kw)
            # fn is a coroutine function, so R is the coroutine type, and awrapper makes one just like fn's
            return cast("Callable[P, R]", awrapper)

        @functools.wraps(fn)
        def wrapper(*a: P.args, **kw: P.kwargs) -> R:
            with (tracer or WorkflowTracer.default()).step(layer, component, op):
                return fn(*a, **kw)
        return wrapper

    return deco
