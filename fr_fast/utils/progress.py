"""Progress display: a tqdm bar on a terminal, plain periodic lines everywhere else.

When stdout or stderr is not a terminal (a log file, CI, ``nohup``), no bar and no escape codes are
written: one line ``desc: 120/1000 img (12%) | 0:40 elapsed, ETA 4:53 | pgd20 41.2`` goes to stderr
at most every ``FR_FAST_PROGRESS_INTERVAL`` seconds (default 20), plus one line when the stage ends.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, TextIO

DEFAULT_INTERVAL_S = 20.0


def _interval() -> float:
    try:
        return float(os.environ.get("FR_FAST_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S


def is_terminal(stream: TextIO | None = None) -> bool:
    """True when both stdout and ``stream`` (default stderr) are terminals."""
    stream = sys.stderr if stream is None else stream
    return all(getattr(s, "isatty", lambda: False)() for s in (sys.stdout, stream))


def clock(seconds: float) -> str:
    """``0:07``, ``12:30``, ``1:02:03``."""
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Progress of one stage: ``update(n)``, ``set_postfix(...)``, ``set_description(desc)``, ``close()``.

    Parameters
    ----------
    total : units of work (None: unknown, no percentage or ETA)
    desc, unit : shown before the count and after it
    enabled : False -> silent
    final_line : plain mode: print a line when the stage closes (off where the caller prints its own)
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", *, enabled: bool = True,
                 final_line: bool = True, stream: TextIO | None = None) -> None:
        self.total, self.desc, self.unit, self.enabled, self.final_line = total, desc, unit, enabled, final_line
        self.stream = sys.stderr if stream is None else stream
        self.n, self.postfix, self._closed = 0, "", False
        self._start = self._last = time.perf_counter()
        self._interval = _interval()
        self._bar = None
        if enabled and is_terminal(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=self.stream)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.perf_counter() - self._last >= self._interval:
            self._print()

    def set_postfix(self, values: dict[str, Any] | None = None, **kwargs: Any) -> None:
        items = {**(values or {}), **kwargs}
        self.postfix = " ".join(f"{k} {v}" for k, v in items.items())
        if self._bar is not None:
            self._bar.set_postfix(items, refresh=False)

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc, refresh=False)

    def line(self, done: bool = False) -> str:
        """The plain-text status line."""
        elapsed = time.perf_counter() - self._start
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        text = f"{self.desc}: {count} {self.unit}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        if done:
            text += f" | done in {clock(elapsed)}"
        elif self.total and self.n:
            text += f" | {clock(elapsed)} elapsed, ETA {clock(elapsed / self.n * (self.total - self.n))}"
        else:
            text += f" | {clock(elapsed)} elapsed"
        return f"{text} | {self.postfix}" if self.postfix else text

    def _print(self, done: bool = False) -> None:
        print(self.line(done), file=self.stream, flush=True)
        self._last = time.perf_counter()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.final_line:
            self._print(done=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def track(iterable: Iterable, desc: str, *, enabled: bool = True, total: int | None = None,
          unit: str = "it") -> Iterator:
    """Iterate ``iterable`` with a :class:`Progress` (total from ``len`` when not given)."""
    if not enabled:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(total, desc, unit, enabled=enabled) as bar:
        for item in iterable:
            yield item
            bar.update(1)
