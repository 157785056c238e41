"""``flowscope replay <correlation_id>``: step through one run in the terminal.

Commands at the prompt (``n`` is the default on an empty line)::

    n, next          the next step           p, prev       the previous step
    j N, jump N      go to step N (0-based)   s, state      the whole state after this step
    d, diff          what this step changed   l, list       every step, the current one marked
    w PATH           watch a state path       w             the watches: value here, steps that changed them
    wd PATH          stop watching PATH       b EXPR        add a breakpoint (``b`` alone lists them)
    bd N             delete breakpoint N      c, continue   run to the next step where a breakpoint holds
    q, quit

``--watch PATH`` and ``--break EXPR`` (both repeatable) start with those watches and breakpoints; with
``--break`` the stepper starts at the first step after ``--from N`` (default: the start) where one holds.
Every step shown prints the watched values. Expressions are :mod:`.breakpoints`'s.

The run comes from the store (``--database-url``, default the configured one)
or from a running backend (``--url http://host:9464``), through the same
replay functions the API uses.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

import requests

from exporter import conventions as c
from exporter.errors import FlowscopeError

from .breakpoints import BreakpointError, parse, parse_path
from .replay import MAX_BREAKPOINTS, MAX_WATCHES, StepOutOfRange, critical_path, debug, steps_of, summary


class ReplayError(FlowscopeError):
    """The run could not be loaded."""


class LocalSource:
    def __init__(self, store, run_id: str):
        got = store.get_run(run_id)
        if got is None:
            raise ReplayError(f"no stored run with correlation_id or trace_id {run_id!r}")
        self.run = got.run._asdict()  # the same object as RemoteSource's, from the API
        spans = [s._asdict() for s in got.spans]
        crit = set(critical_path(spans))
        self._steps = steps_of(spans)
        self.steps = [{**summary(s), "on_critical_path": s["span_id"] in crit} for s in self._steps]

    def replay(self, n: int, watches: list[str] | None = None) -> dict:
        return debug(self._steps, n, watches or ())

    def run_to(self, after: int, breaks: list[str], watches: list[str] | None = None) -> dict:
        """The next step after ``after`` where one of ``breaks`` holds (``body["breakpoint"]["hit"]``)."""
        return debug(self._steps, None, watches or (), [parse(b) for b in breaks], after)


class RemoteSource:
    def __init__(self, url: str, run_id: str, timeout_s: float = 10.0):
        self.base = url.rstrip("/") + c.RUNS_PATH + "/" + requests.utils.quote(run_id, safe="")
        self.timeout_s = timeout_s
        body = self._get(self.base)
        self.run = body["run"]
        crit = set(body["critical_path"])
        self.steps = [{**s, "on_critical_path": s["span_id"] in crit} for s in body["steps"]]

    def _get(self, url: str, **params) -> dict:
        try:
            r = requests.get(url, params=params, timeout=self.timeout_s)
        except requests.RequestException as e:
            raise ReplayError(f"cannot reach {url}: {e}") from None
        err = r.json().get("error", {}) if r.status_code == 400 else {}
        if err.get("code") == "step_out_of_range":
            raise StepOutOfRange(int(params.get("step", -1)), len(self.steps))
        if err.get("code") in ("invalid_breakpoint", "invalid_watch"):  # the server's parser, the same as ours
            raise BreakpointError(err["message"], int(err.get("position", 0)), str(err.get("expression", "")))
        if r.status_code != 200:
            raise ReplayError(f"{url}: HTTP {r.status_code}: {r.text[:200]}")
        return r.json()

    def replay(self, n: int, watches: list[str] | None = None) -> dict:
        return self._get(self.base + "/replay", step=n, watch=watches or [])

    def run_to(self, after: int, breaks: list[str], watches: list[str] | None = None) -> dict:
        return self._get(self.base + "/replay", **{"break": breaks, "from": after, "watch": watches or []})


def _fmt(v) -> str:
    return json.dumps(v, ensure_ascii=False, default=str)


def pointer(e: BreakpointError) -> str:
    """The expression with a caret under the position the parser stopped at, and why."""
    return f"  {e.text}\n  {' ' * e.position}^ {e.reason}"


def _shown(v: dict) -> str:
    if v.get("elided"):
        return f"({v['bytes']} bytes of JSON)"
    return _fmt(v["value"]) if v["present"] else "(absent)"


class Stepper:
    def __init__(self, source, out: TextIO = sys.stdout, watches: list[str] | None = None,
                 breaks: list[str] | None = None, start_from: int | None = None):
        """``watches`` and ``breaks`` are checked here (:class:`ReplayError` pointing at the fault)."""
        self.src, self.out, self.pos = source, out, 0
        self.watches: list[str] = []
        self.breaks: list[str] = []
        for w in watches or ():
            self._check(w, "--watch")
        for b in breaks or ():
            self._check(b, "--break")
        if start_from is not None and not breaks:
            raise ReplayError("--from goes with --break (run to the first step after it where one holds)")
        if start_from is not None and not -1 <= start_from < max(len(source.steps), 1):
            raise ReplayError(f"--from must be a step number -1..{len(source.steps) - 1}")
        self.start_from = -1 if start_from is None else start_from

    def _check(self, text: str, what: str) -> None:
        try:
            if what == "--watch":
                parse_path(text)
                self.watches.append(text)
            else:
                parse(text)
                self.breaks.append(text)
        except BreakpointError as e:
            raise ReplayError(f"{what} {text!r}: {e.reason} (at position {e.position})\n{pointer(e)}") from None

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def header(self) -> None:
        r = self.src.run
        self.say(f"run {r['correlation_id']} · {r['workflow']} · {r['status']} · {r['duration_ms']:.1f} ms · "
                 f"{len(self.src.steps)} steps")
        self.say("commands: n(ext) p(rev) j(ump) N  s(tate) d(iff) l(ist)  w(atch) PATH  b(reak) EXPR  c(ontinue)  "
                 "q(uit)")

    def show_step(self, body: dict | None = None) -> dict:
        body = body or self.src.replay(self.pos, self.watches)
        s = self.src.steps[self.pos]
        mark = " ◆ critical path" if s["on_critical_path"] else ""
        err = f" {s['error_type']}: {s['error_message']}" if s.get("error_type") else ""
        self.say(f"[{self.pos}/{len(self.src.steps) - 1}] {s['layer']}/{s['component']}/{s['operation']} "
                 f"{s['status']} {s['duration_ms']:.2f} ms{mark}{err}")
        changes = body["diff"]
        self.say("  " + (f"{len(changes)} change(s): " + ", ".join(f"{d['op']} {d['path']}" for d in changes)
                         if changes else "no state change"))
        for w in body.get("watches", ()):
            here = " (changed here)" if self.pos in w["changed_at"] else ""
            self.say(f"  watch {w['path']} = {_shown(w['values'][self.pos])}{here}")
        return body

    def run_to_break(self, after: int, start: bool = False) -> None:
        """Go to the next step after ``after`` where a breakpoint holds, or say that none does (and stay, or
        at the ``start`` show the step it searched from)."""
        if not self.breaks:
            self.say("no breakpoints; add one with b EXPR (e.g. b cart.total > 100)")
            return
        body = self.src.run_to(after, self.breaks, self.watches)
        bp = body["breakpoint"]
        if bp["hit"] is None:
            self.say(f"no step after {after} matches " + " or ".join(self.breaks))
            if not start:
                return
        else:
            self.say(f"breakpoint: {' | '.join(bp['matched'])}")
        self.pos = body["step"]
        self.show_step(body)

    def list_watches(self) -> None:
        if not self.watches:
            self.say("no watches; add one with w PATH (e.g. w cart.total)")
            return
        for w in self.src.replay(self.pos, self.watches)["watches"]:
            changed = ("changed at steps " + ", ".join(map(str, w["changed_at"])) if w["changed_at"]
                       else "absent at every step")
            self.say(f"  {w['path']} = {_shown(w['values'][self.pos])} · {changed}")

    def command(self, line: str) -> bool:
        """Run one command; False when the user quits."""
        parts = line.strip().split()
        cmd, arg = (parts[0].lower() if parts else "n"), (parts[1] if len(parts) > 1 else None)
        rest = line.strip().split(None, 1)[1] if len(parts) > 1 else ""
        last = len(self.src.steps) - 1
        if cmd in ("q", "quit", "exit"):
            return False
        if cmd in ("n", "next"):
            if self.pos >= last:
                self.say("already at the last step")
                return True
            self.pos += 1
            self.show_step()
        elif cmd in ("p", "prev", "previous"):
            if self.pos == 0:
                self.say("already at the first step")
                return True
            self.pos -= 1
            self.show_step()
        elif cmd in ("j", "jump"):
            if arg is None or not arg.lstrip("-").isdigit() or not 0 <= int(arg) <= last:
                self.say(f"jump needs a step number 0..{last}")
                return True
            self.pos = int(arg)
            self.show_step()
        elif cmd in ("s", "state"):
            self.say(json.dumps(self.src.replay(self.pos)["state"], indent=2, ensure_ascii=False, default=str))
        elif cmd in ("d", "diff"):
            changes = self.src.replay(self.pos)["diff"]
            if not changes:
                self.say("this step did not change the state")
            for d in changes:
                self.say(f"  {d['op']:<8} {d['path']}: {_fmt(d['before'])} → {_fmt(d['after'])}")
        elif cmd in ("l", "list"):
            for i, s in enumerate(self.src.steps):
                here = "▶" if i == self.pos else " "
                crit = "◆" if s["on_critical_path"] else " "
                self.say(f"{here}{crit}{i:>4} {s['layer']:<9} {s['component']}/{s['operation']} {s['status']} "
                         f"{s['duration_ms']:.2f} ms")
        elif cmd in ("w", "watch", "b", "break"):
            kind, items, limit = (("watch", self.watches, MAX_WATCHES) if cmd.startswith("w")
                                  else ("breakpoint", self.breaks, MAX_BREAKPOINTS))
            if not rest:
                if kind == "watch":
                    self.list_watches()
                else:
                    for i, b in enumerate(self.breaks):
                        self.say(f"  {i}: {b}")
                    if not self.breaks:
                        self.say("no breakpoints; add one with b EXPR (e.g. b error or layer=database)")
            elif rest in items:
                self.say(f"already a {kind}: {rest}")
            elif len(items) >= limit:
                self.say(f"at most {limit} {kind}s")
            else:
                try:
                    parse_path(rest) if kind == "watch" else parse(rest)
                except BreakpointError as e:
                    self.say(f"not a {kind}: {e.reason}\n{pointer(e)}")
                    return True
                items.append(rest)
                if kind == "watch":
                    self.list_watches()
                else:
                    self.say(f"breakpoint {len(items) - 1}: {rest}")
        elif cmd in ("wd", "unwatch"):
            if rest in self.watches:
                self.watches.remove(rest)
                self.say(f"no longer watching {rest}")
            else:
                self.say(f"not watching {rest!r}; watches: " + (", ".join(self.watches) or "none"))
        elif cmd in ("bd", "delete"):
            if arg is None or not arg.isdigit() or not int(arg) < len(self.breaks):
                self.say(f"bd needs a breakpoint number 0..{len(self.breaks) - 1}" if self.breaks
                         else "no breakpoints to delete")
                return True
            self.say(f"deleted breakpoint {arg}: {self.breaks.pop(int(arg))}")
        elif cmd in ("c", "continue"):
            self.run_to_break(self.pos)
        else:
            self.say(f"unknown command {cmd!r}; commands: n p j N s d l w b c q")
        return True

    def loop(self, inp: TextIO = sys.stdin) -> None:
        self.header()
        if not self.src.steps:
            self.say("this run has no steps")
            return
        if self.breaks:
            self.run_to_break(self.start_from, start=True)
        else:
            self.show_step()
        while True:
            if inp.isatty():
                self.out.write("replay> ")
                self.out.flush()
            line = inp.readline()
            if not line or not self.command(line):
                return
