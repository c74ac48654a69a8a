"""What ``run --local`` shows: one line per finished step while it runs, the whole log on disk,
and a verdict at the end.

The KFP local runner prints every task's streamed log, its executor input and outputs, and a
warning per task about settings it ignores. All of that goes to ``<home>/logs/run-*.log``
unchanged; the console gets a line per step (``-v`` streams everything) and never the
known-harmless warnings below.
"""

from __future__ import annotations

import collections
import io
import re
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

#: Warnings the KFP local runner gives for every task, about settings that only a cluster
#: honours (resources, accelerators, images): harmless locally, filtered from the console.
HARMLESS_WARNINGS = (
    re.compile(r"have no effect in the current local runner and will be ignored"),
    re.compile(r"You may be attemping to run a task that uses custom or non-Python base image"),
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '([^']+)'")
FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
#: The last line of a Python traceback: what a failed step says about itself.
EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit)\w*): (.+)$")


def is_harmless(message: str, category: type[Warning] = UserWarning, filename: str = "") -> bool:
    """A local-runner warning about cluster-only settings, or a library's deprecation notice
    (nothing a user of this command can act on)."""
    if any(p.search(message) for p in HARMLESS_WARNINGS):
        return True
    return issubclass(category, DeprecationWarning | FutureWarning) and "site-packages" in filename


class RunConsole(io.TextIOBase):
    """A stdout for the local runner: everything to the log file, a short version to ``console``."""

    def __init__(self, log: TextIO, console: TextIO, verbose: bool = False) -> None:
        self.log = log
        self.console = console
        self.verbose = verbose
        self._partial = ""
        self._started: dict[str, list[float]] = collections.defaultdict(list)
        self.recent: dict[str, collections.deque[str]] = {}
        self._current = ""
        self.failed_task: str | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    def _line(self, line: str) -> None:
        plain = ANSI.sub("", line)
        if self.verbose:
            self.console.write(line + "\n")
        if started := STARTED.search(plain):
            self._current = started.group(1)
            self._started[self._current].append(time.monotonic())
            self.recent.setdefault(self._current, collections.deque(maxlen=60)).clear()
            return
        if finished := FINISHED.search(plain):
            name, state = finished.groups()
            begun = self._started[name].pop(0) if self._started[name] else time.monotonic()
            if state != "SUCCESS":
                self.failed_task = self.failed_task or name
            if not self.verbose:
                self.console.write(f"  {name:<16} {state.lower():<8} {time.monotonic() - begun:6.1f} s\n")
            return
        if self._current:
            self.recent.setdefault(self._current, collections.deque(maxlen=60)).append(plain)

    def failure_reason(self, task: str) -> str | None:
        """The exception a failed task's log ends with (``ValueError: ...``), if any."""
        for line in reversed(self.recent.get(task, ())):
            if m := EXCEPTION_LINE.match(line):
                return f"{m.group(1)}: {m.group(2).strip()}"
        return None


@contextmanager
def local_run_console(log_path: Path, verbose: bool = False, console: TextIO | None = None) -> Iterator[RunConsole]:
    """Route stdout and warnings through a :class:`RunConsole` writing ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    console = console or sys.stdout
    with log_path.open("w", encoding="utf-8") as log:
        out = RunConsole(log, console, verbose)
        saved_stdout, saved_show = sys.stdout, warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            text = warnings.formatwarning(message, category, filename, lineno, line)
            log.write(text)
            if not is_harmless(str(message), category, str(filename)):
                sys.stderr.write(text)

        sys.stdout, warnings.showwarning = out, show
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always")  # every task's warning reaches the log, not only the first
                warnings.showwarning = show
                yield out
        finally:
            out.flush()
            sys.stdout, warnings.showwarning = saved_stdout, saved_show


def _interval(pair: Any) -> str:
    return f"{pair[0]:.2f}-{pair[1]:.2f}" if pair else "?"


def verdict_lines(summary: dict[str, Any]) -> list[str]:
    """The human summary of a local run (what ``run --local`` prints at the end)."""
    lines: list[str] = [""]
    gate = summary.get("gate")
    metrics = summary.get("metrics")
    if gate is None:
        lines.append("Gate: no verdict (evaluation did not run)")
    else:
        lines.append(f"Gate: {'PASSED' if gate['passed'] else 'FAILED'}")
        lines += [f"  - {reason}" for reason in gate["reasons"]]
    if metrics:
        low, high = metrics["accuracy_interval"]
        lines.append(f"Test accuracy: {metrics['accuracy']:.3f} (95% interval {low:.3f}-{high:.3f}) "
                     f"on {metrics['n']} photos")
        recalls = ", ".join(f"{name} {metrics['recall'][name]:.2f} ({_interval(metrics['recall_interval'].get(name))})"
                            for name in metrics["class_names"])
        lines.append(f"Recall per class: {recalls}")
    ood = summary.get("unknown")
    if ood:
        t = ood["test_flagged"]
        line = (f"Unknown uploads: {ood['method']} rule, {t['flagged']} of {t['n']} test photos flagged "
                f"({t['rate']:.1%}; set for {ood['false_flag_rate']:.0%} of val)")
        cv = (ood.get("trained") or {}).get("cross_validated")
        if cv:
            line += (f"; {cv['caught']['rate']:.1%} of {cv['outliers']} OOD photos caught, cross-validated by "
                     f"source (AUROC {cv['auroc']:.3f})")
        lines.append(line)
    model = summary["model_name"]
    if summary.get("champion_version") is None:
        lines.append(f"Champion: none ({model} has no champion yet)")
    else:
        moved = "this run" if summary.get("registered") else "unchanged, not this run"
        lines.append(f"Champion: {model} version {summary['champion_version']} ({moved}), "
                     f"models:/{model}@champion in {summary['tracking_uri']}")
    home = summary["home_arg"]
    suffix = "" if home == ".clazzify" else f" HOME_DIR={home}"
    lines += [
        "",
        "Next:",
        f"  make mlflow-ui{suffix}   the run, its curves, confusion matrix and gate report on http://127.0.0.1:5000",
        f"  make serve{suffix}       serve the champion on http://127.0.0.1:8080",
        f"  make review{suffix}      the moderators' review page on http://127.0.0.1:8090",
        f"Full log: {summary['log']}",
    ]
    return lines
