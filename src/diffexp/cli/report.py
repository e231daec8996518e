"""``diffexp-report DIR``: the report of a folder of runs (see :mod:`diffexp.runs.report`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..runs.report import _write_report, log_to_wandb

DESCRIPTION = ("gather the jobs of a multirun (or any folder of runs) into tables and plots "
               "(report.md, report.csv, heatmap, line plots)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="diffexp-report", description=DESCRIPTION)
    p.add_argument("dir", help="a multirun folder (or any folder of runs)")
    p.add_argument("--out", default=None, help="where to write the report (default: DIR)")
    p.add_argument("--x", default=None, metavar="KEY",
                   help="the heatmap's x axis (default: the first numeric swept key)")
    p.add_argument("--y", default=None, metavar="KEY",
                   help="the heatmap's y axis (default: the first other swept key)")
    p.add_argument("--baseline", default=None, metavar="SPEC",
                   help="the cell to compare the others with: key=value[,key=value] over the "
                        "swept keys, or a job folder; differences over 2 standard errors marked")
    p.add_argument("--wandb", action="store_true",
                   help="also log a summary run (cell table, plots, fid_best) to wandb")
    p.add_argument("--wandb-project", default="diffexp")
    p.add_argument("--wandb-entity", default=None)
    p.add_argument("--wandb-group", default=None, help="default: DIR's name (the sweep's group)")
    p.add_argument("--wandb-mode", default="auto", choices=["auto", "online", "offline"],
                   help="auto: $WANDB_MODE, else online when logged in, else offline (under DIR)")
    a = p.parse_args(argv)
    if not Path(a.dir).is_dir():
        print(f"error: {a.dir}: no such folder", file=sys.stderr)
        sys.exit(2)
    try:
        files, rows, swept = _write_report(a.dir, a.out, a.x, a.y, a.baseline)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print((Path(files["md"])).read_text())
    for name, path in files.items():
        print(f"[diffexp] {name}: {path}")
    if a.wandb:
        run_dir = log_to_wandb(a.dir, files, rows, swept, project=a.wandb_project,
                               entity=a.wandb_entity, group=a.wandb_group, mode=a.wandb_mode)
        print(f"[diffexp] wandb: {run_dir}")


if __name__ == "__main__":
    main()
