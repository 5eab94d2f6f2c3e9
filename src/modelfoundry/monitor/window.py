"""A window of served rows: what the server compares with the reference, one window at a time.

A window collects the answered batches of one model version as they come (a reference to each batch's
read-only rows and outputs: no copy, no per-row work on the hot path) and closes once it holds
`monitor.window.rows` rows, or `monitor.window.seconds` after its first row (whichever comes first). A batch
that would overfill a window is split, so a rows-window holds exactly `rows` rows however large the requests.
A time window is closed by the next batch or by a read (the monitor endpoint) that finds it due; closed with
fewer than `min_rows` rows it is not tested (too few to tell drift from chance), and says so.

Joining the batches and turning them into column values (monitor/columns.py) happens once per window, after it
closed, in the thread that tests it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from modelfoundry.config.monitor import WindowConfig
    from modelfoundry.data.input_schema import CheckedRows


@dataclass
class ClosedWindow:
    """A closed window's batches; `tested` is False when it closed by time with too few rows. The batches are
    joined when `rows` / `outputs` are first read (in the thread that tests the window, not the event loop)."""

    parts: list[CheckedRows]
    output_parts: list[np.ndarray]
    count: int
    started: float  # time.time() of its first row
    ended: float  # when it closed
    by: str  # "rows" or "seconds": what closed it
    tested: bool

    @cached_property
    def rows(self) -> CheckedRows | None:
        """The window's rows, joined (None when it holds none)."""
        from modelfoundry.data.input_schema import CheckedRows

        return CheckedRows.join(self.parts) if self.parts else None

    @cached_property
    def outputs(self) -> np.ndarray:
        """(N, K) class probabilities or (N,) values, in the rows' order."""
        return np.concatenate(self.output_parts) if self.output_parts else np.empty(0)

    def note(self, min_rows: int) -> str:
        """Why the window was not tested ('' when it was)."""
        if self.tested:
            return ""
        return (f"closed after {self.ended - self.started:.0f} s with {self.count} rows, fewer than "
                f"monitor.window.min_rows={min_rows}: not tested")


class Window:
    """The open window of one model version. Not thread-safe: its owner holds a lock around it."""

    def __init__(self, config: WindowConfig):
        self.config = config
        self._rows: list[CheckedRows] = []
        self._outputs: list[np.ndarray] = []
        self.count = 0
        self.started: float | None = None

    def due(self, now: float) -> bool:
        """True when a time window has run its `seconds` (it holds at least one row)."""
        seconds = self.config.seconds
        return seconds is not None and self.started is not None and now - self.started >= seconds

    def add(self, rows: CheckedRows, outputs: np.ndarray, now: float) -> list[ClosedWindow]:
        """Add one answered batch; returns the windows it closed (usually none, one when it fills a window)."""
        closed = [self.close(now, "seconds")] if self.due(now) else []
        size, start, n = self.config.rows, 0, len(outputs)
        while start < n:
            take = min(n - start, size - self.count)
            whole = start == 0 and take == n
            self._rows.append(rows if whole else rows[start:start + take])
            self._outputs.append(outputs if whole else outputs[start:start + take])
            if self.started is None:
                self.started = now
            self.count += take
            start += take
            if self.count >= size:
                closed.append(self.close(now, "rows"))
        return closed

    def close(self, now: float, by: str) -> ClosedWindow:
        """Close the window now and start an empty one."""
        tested = self.count >= (self.config.min_rows if by == "seconds" else 1)
        window = ClosedWindow(self._rows, self._outputs, self.count,
                              self.started if self.started is not None else now, now, by, tested)
        self._rows, self._outputs, self.count, self.started = [], [], 0, None
        return window

    def state(self, now: float) -> dict[str, object]:
        """The open window for the monitor endpoint: rows so far, its size, and since when."""
        return {"rows": self.count, "size": self.config.rows, "seconds": self.config.seconds,
                "min_rows": self.config.min_rows,
                "age_s": round(now - self.started, 3) if self.started is not None else None}
