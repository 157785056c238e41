"""``flowscope replay <correlation_id>``: step through one run in the terminal.

Commands at the prompt (``n`` is the default on an empty line)::

    n, next          the next step           p, prev       the previous step
    j N, jump N      go to step N (0-based)   s, state      the whole state after this step
    d, diff          what this step changed   l, list       every step, the current one marked
    q, quit

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

from .replay import StepOutOfRange, critical_path, replay, steps_of, summary


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

    def replay(self, n: int) -> dict:
        return replay(self._steps, n)


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
        if r.status_code == 400 and r.json().get("error", {}).get("code") == "step_out_of_range":
            raise StepOutOfRange(int(params.get("step", -1)), len(self.steps))
        if r.status_code != 200:
            raise ReplayError(f"{url}: HTTP {r.status_code}: {r.text[:200]}")
        return r.json()

    def replay(self, n: int) -> dict:
        return self._get(self.base + "/replay", step=n)


def _fmt(v) -> str:
    return json.dumps(v, ensure_ascii=False, default=str)


class Stepper:
    def __init__(self, source, out: TextIO = sys.stdout):
        self.src, self.out, self.pos = source, out, 0

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def header(self) -> None:
        r = self.src.run
        self.say(f"run {r['correlation_id']} · {r['workflow']} · {r['status']} · {r['duration_ms']:.1f} ms · "
                 f"{len(self.src.steps)} steps")
        self.say("commands: n(ext) p(rev) j(ump) N  s(tate) d(iff) l(ist) q(uit)")

    def show_step(self) -> dict:
        body = self.src.replay(self.pos)
        s = self.src.steps[self.pos]
        mark = " ◆ critical path" if s["on_critical_path"] else ""
        err = f" {s['error_type']}: {s['error_message']}" if s.get("error_type") else ""
        self.say(f"[{self.pos}/{len(self.src.steps) - 1}] {s['layer']}/{s['component']}/{s['operation']} "
                 f"{s['status']} {s['duration_ms']:.2f} ms{mark}{err}")
        changes = body["diff"]
        self.say("  " + (f"{len(changes)} change(s): " + ", ".join(f"{d['op']} {d['path']}" for d in changes)
                         if changes else "no state change"))
        return body

    def command(self, line: str) -> bool:
        """Run one command; False when the user quits."""
        parts = line.strip().split()
        cmd, arg = (parts[0].lower() if parts else "n"), (parts[1] if len(parts) > 1 else None)
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
        else:
            self.say(f"unknown command {cmd!r}; commands: n p j N s d l q")
        return True

    def loop(self, inp: TextIO = sys.stdin) -> None:
        self.header()
        if not self.src.steps:
            self.say("this run has no steps")
            return
        self.show_step()
        while True:
            if inp.isatty():
                self.out.write("replay> ")
                self.out.flush()
            line = inp.readline()
            if not line or not self.command(line):
                return
