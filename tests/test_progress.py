"""Progress lines: in a log one line every 30 s with done/total, rate and ETA; on a terminal one
line rewritten in place; and the sampler reports each batch."""

from __future__ import annotations

import io

import torch

from diffexp import sampling
from diffexp.progress import Progress
from diffexp.schedules import build_schedule


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_log_lines_every_30_seconds_with_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    p = Progress(100, "sampling", stream=out, tty=False, clock=clock)
    for _ in range(5):  # 10 images every 10 s: a line at 30 s only
        clock.t += 10
        p.update(10)
    lines = out.getvalue().splitlines()
    assert lines == ["[diffexp] sampling: 30/100 images (30%), 1.0 images/s, ETA 1m10s"]
    clock.t += 50
    p.update(50)  # finished: no progress line, the closing line says so
    p.close()
    last = out.getvalue().splitlines()[-1]
    assert last == ("[diffexp] sampling: 100/100 images (100%), 1.0 images/s, ETA 0s, "
                    "done in 1m40s")


def test_a_short_loop_prints_nothing_in_a_log_and_rewrites_on_a_terminal():
    out, clock = io.StringIO(), Clock()
    p = Progress(4, "scoring", stream=out, tty=False, clock=clock)
    clock.t += 2
    p.update(4)
    p.close()
    assert out.getvalue() == ""
    tty, clock = io.StringIO(), Clock()
    p = Progress(4, "scoring", stream=tty, tty=True, clock=clock)
    for _ in range(4):
        clock.t += 1
        p.update(1)
    p.close()
    text = tty.getvalue()
    assert text.count("\r") == 4 and text.endswith("4/4 images (100%), 1.0 images/s, ETA 0s\n")


def test_sample_reports_each_batch():
    sched = build_schedule("cosine", start=0.0, end=1.0, tau=1.0, t_min=1e-3, t_max=0.999)
    seen = []
    res = sampling.sample(lambda x, s: torch.zeros_like(x), sched, n=10, shape=(1, 4, 4), seed=0,
                          sampler="euler", steps=2, batch_size=4, on_batch=seen.append)
    assert seen == [4, 4, 2] and res.x0.shape == (10, 1, 4, 4)
