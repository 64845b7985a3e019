"""Training progress that is always on: a tqdm bar on a terminal, otherwise (logs, CI, ``nohup``, the
evaluation harness) a one-line status every ``CROSSMAT_PROGRESS_SECONDS`` seconds (default 30) plus a
line at the start and at the end. No recipe key turns it off: ``train.progress_bar: false`` only swaps the
bar for the status lines."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm

INTERVAL_ENV = "CROSSMAT_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def _interval() -> float:
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV}={raw!r} is not a number of seconds") from None


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class StatusLine:
    """``tqdm``-like progress (``update``, ``set_postfix``, ``close``) that prints one line every
    ``interval`` seconds: step/total, percent, epoch, running loss, rate, elapsed and ETA."""

    def __init__(self, total: int, initial: int, desc: str, stream: TextIO | None = None,
                 interval: float | None = None, unit: str = "step") -> None:
        self.total, self.n, self.desc, self.unit = int(total), int(initial), desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval = _interval() if interval is None else interval
        self.t0 = self.last = time.perf_counter()
        self.n0 = self.n
        self.postfix: dict[str, Any] = {}
        self.closed = False
        self._emit("start")

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.postfix.update(ordered_dict or {}, **kwargs)

    def update(self, n: int = 1, **info: Any) -> None:
        """Advance by ``n``; ``info`` (e.g. ``epoch=``, ``loss=``) is shown when a line is due. Values may
        be callables, evaluated only then (so a status line costs nothing between lines)."""
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self.postfix.update({k: (v() if callable(v) else v) for k, v in info.items()})
            self._emit()

    def _emit(self, event: str = "") -> None:
        elapsed = time.perf_counter() - self.t0
        done = self.n - self.n0
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"[crossmat] {self.desc}: {self.unit} {self.n}/{self.total}"
                 + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        for key, value in self.postfix.items():
            if value is not None:
                parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        if event == "start":
            parts.append("started")
        else:
            parts.append(f"{rate:.2f} {self.unit}s/s, elapsed {_hms(elapsed)}")
            if event != "done" and rate > 0 and self.total > self.n:
                parts.append(f"ETA {_hms((self.total - self.n) / rate)}")
        if event == "done":
            parts.append("done")
        print(", ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._emit("done")


class _Off:
    """Progress on a non-main process: nothing is printed (the main process reports)."""

    def update(self, n: int = 1, **info: Any) -> None:
        return None

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        return None


class _Bar:
    """A tqdm bar whose ``update`` accepts (and ignores) the status-line information."""

    def __init__(self, **kwargs: Any) -> None:
        self.bar = tqdm(**kwargs)

    def update(self, n: int = 1, **info: Any) -> None:
        self.bar.update(n)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        self.bar.set_postfix(*args, **kwargs)

    def close(self) -> None:
        self.bar.close()


def training_progress(total: int, initial: int, desc: str, main_process: bool = True, bar: bool = True,
                      stream: TextIO | None = None) -> StatusLine | _Bar | _Off:
    """The progress reporter of a training loop: a tqdm bar when ``bar`` and the stream is a terminal,
    status lines otherwise; silent only on non-main processes."""
    if not main_process:
        return _Off()
    stream = stream if stream is not None else sys.stderr
    if bar and hasattr(stream, "isatty") and stream.isatty():
        return _Bar(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=stream)
    return StatusLine(total, initial, desc, stream=stream)
