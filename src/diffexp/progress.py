"""Progress of a long loop (sampling thousands of images, extracting their features): on a
terminal one line rewritten in place; in a log file a line every ``every_s`` seconds, so a job's
log shows it is alive without flooding. Each line: done/total, rate and time left."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    def __init__(self, total: int, label: str, unit: str = "images", *, every_s: float = 30.0,
                 stream=None, tty: bool | None = None, clock=time.monotonic):
        self.total, self.label, self.unit, self.every_s = int(total), label, unit, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.t0 = self.last = clock()
        self.done = 0
        self.printed = False

    def line(self) -> str:
        elapsed = max(self.clock() - self.t0, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = _duration(left) if left != float("inf") else "?"
        pct = 100 * self.done / self.total if self.total else 100
        return (f"[diffexp] {self.label}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), "
                f"{rate:.1f} {self.unit}/s, ETA {eta}")

    def update(self, n: int) -> None:
        """``n`` more items done."""
        self.done += int(n)
        now = self.clock()
        if self.tty:
            if now - self.last >= 0.5 or self.done >= self.total:
                self.stream.write("\r" + self.line())
                self.stream.flush()
                self.last, self.printed = now, True
        elif now - self.last >= self.every_s and self.done < self.total:
            print(self.line(), file=self.stream, flush=True)
            self.last, self.printed = now, True

    def close(self) -> None:
        """End the line on a terminal; in a log, a closing line if progress lines were shown."""
        if self.tty and self.printed:
            self.stream.write("\n")
            self.stream.flush()
        elif self.printed:
            print(self.line() + f", done in {_duration(self.clock() - self.t0)}",
                  file=self.stream, flush=True)
