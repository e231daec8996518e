"""What a researcher finds in wandb, read back from the offline runs themselves: a tiny sweep (its
model trainings and its cells) and an eval.py run on one of its models, each .wandb file decoded
record by record (the LevelDB-style log wandb writes: 32 KiB blocks of checksummed records, each
a wandb_internal_pb2.Record)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from .helpers import TINY_MODEL, run_cli

TINY = ["data=synthetic", "train.batch_size=16", "train.n_sample_images=4", "sampler.steps=2",
        "trainer.limit_train_batches=3", "trainer.log_every_n_steps=1", *TINY_MODEL]


def _records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, pos, out, buf = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # a whole record
            out.append(chunk)
        elif kind == 2:  # first / middle / last pieces of a record spanning blocks
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
            buf = b""
    return [pb.Record.FromString(d) for d in out]


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def decode(run_file: Path) -> dict:
    """``{id, job_type, group, name, config: {key: value}, history: set, summary: {key: value}}``"""
    run = {"config": {}, "history": set(), "summary": {}}
    for r in _records(run_file):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run.update(id=r.run.run_id, job_type=r.run.job_type, group=r.run.run_group,
                       name=r.run.display_name)
            run["config"].update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            run["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            keys = {_key(i) for i in r.history.item}
            # a media value (image, table) is a nested item: "key/_type", "key/path", ...
            run["history"] |= keys | {k[:-len("/_type")] for k in keys if k.endswith("/_type")}
        elif kind == "summary":
            run["summary"].update({_key(i): json.loads(i.value_json) for i in r.summary.update})
    return run


def _runs(folder: Path) -> list[dict]:
    return [decode(f) for f in sorted(folder.glob("**/offline-run-*/run-*.wandb"))]


def _cli(script: str, *args, cwd):
    return run_cli(script, *args, cwd=cwd, timeout=900, env={"WANDB_MODE": "offline"})


def _quiet(r) -> None:
    """No library notice on a normal run: wandb's warning about the `anonymous` setting and
    Lightning's litlogger tip."""
    out = r.stdout + r.stderr
    assert "anonymous" not in out and "litlogger" not in out and "Tip:" not in out, out[-3000:]


@pytest.mark.slow
def test_a_sweep_and_an_eval_read_as_a_dashboard(tmp_path, data_root):
    r = _cli("train.py", "-m", *TINY, "logger=wandb", "data.scale=0.5,1", "eval.n_samples=16",
             "eval.batch_size=16", "eval.diagnostics=false", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    _quiet(r)
    trainings = _runs(tmp_path / "runs" / "models")
    in_sweep = _runs(tmp_path / "sweep")
    cells = [run for run in in_sweep if run["job_type"] == "eval"]
    summaries = [run for run in in_sweep if run["job_type"] != "eval"]
    assert len(trainings) == 2 and len(cells) == 2 and len(summaries) == 1
    assert summaries[0]["summary"]["cells/_type"] == "table-file"  # the report's cell table
    assert summaries[0]["group"] == "sweep"
    # a training run is named by the swept keys that change its weights
    assert sorted(t["name"] for t in trainings) == ["cosine-eps data.scale=0.5",
                                                    "cosine-eps data.scale=1.0"]
    for t in trainings:
        assert t["job_type"] == "train" and t["group"] == "sweep"
        assert {"train/loss_step", "train/lr", "train/grad_norm", "train/ema_decay"} <= t["history"]
        assert not [k for k in t["history"] if k.startswith("lr-")]
        assert t["config"]["parameters"] > 0 and "final_train_loss" in t["summary"]
        # the config once, at the top level (not again under the module's `cfg`)
        assert "cfg" not in t["config"] and t["config"]["schedule"]["name"] == "cosine"
    for cell in cells:
        assert cell["job_type"] == "eval" and cell["group"] == "sweep"
        assert cell["name"].startswith("cosine-eps/") and "data.scale=" in cell["name"]
        # one namespace for the evaluation's numbers: eval/..., no bare twins
        assert {"eval/fid", "eval/kid_mean", "eval/floor_fid", "eval/precision"} \
            <= set(cell["summary"])
        assert not {"fid", "kid", "floor_fid", "precision"} & set(cell["summary"])
        # each cell carries the sample grids of its evaluation
        assert {"eval/samples", "eval/samples_by_class"} <= cell["history"]
        assert cell["config"]["trained_model"]["wandb_id"] in {t["id"] for t in trainings}
    assert {c["name"] for c in cells} != {cells[0]["name"]}  # named from their overrides

    model = next((tmp_path / "runs" / "models").glob("*/DONE.json")).parent
    r = _cli("eval.py", f"ckpt={model / 'checkpoints' / 'last.ckpt'}", "logger=wandb",
             "sampler=euler", "sampler.steps=3", "eval.n_samples=16", "eval.batch_size=16",
             "eval.per_step=true", "eval.diagnostics=false", "hydra.run.dir=ev", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    _quiet(r)
    (ev,) = _runs(tmp_path / "ev")
    trained = json.loads((model / "wandb.json").read_text())
    assert ev["job_type"] == "eval" and ev["group"] == trained["group"]
    cfg = ev["config"]
    assert cfg["trained_run_id"] == trained["id"]
    assert cfg["schedule"]["name"] == "cosine" and cfg["objective"]["name"] == "eps"
    assert cfg["data"]["scale"] in (0.5, 1.0) and cfg["eval"]["n_samples"] == 16
    assert "eval" not in cfg["eval"]  # no eval.eval.*
    assert {"eval/fid", "eval/kid_mean", "eval/precision", "eval/recall"} <= set(ev["summary"])
    assert not {"fid", "kid"} & set(ev["summary"])
    assert {"eval/fid_vs_nfe", "eval/per_step_table", "eval/samples",
            "eval/samples_by_class", "eval/per_step"} <= ev["history"]
    assert ev["summary"]["eval/fid_vs_nfe/_type"] == "table-file"
    assert ev["summary"]["eval/per_step_table/_type"] == "table-file"
    for run in [*trainings, *in_sweep, ev]:  # `pytest -s` shows what a dashboard reads
        print(f"\n[{run['job_type']}] {run['name']} (group {run['group']})\n"
              f"  history: {sorted(k for k in run['history'] if '/_' not in k and '/path' not in k)}\n"
              f"  summary: {sorted(k for k in run['summary'] if '/_' not in k)}\n"
              f"  config: {sorted(run['config'])}")


# ----------------------------------------------------------------------------- a quiet, agreed run
class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_the_litlogger_tip_alone_is_dropped():
    """Lightning's notice to install litlogger is dropped; its other INFO lines still show."""
    import pytorch_lightning as pl

    from diffexp.runs.env import quiet_lightning_tip

    log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    seen = _Collect()
    log.addHandler(seen)
    level = log.level
    log.setLevel(logging.INFO)  # whatever an earlier test in this process left it at
    try:
        quiet_lightning_tip()
        quiet_lightning_tip()  # idempotent: one filter
        pl.Trainer(logger=False, accelerator="cpu", enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    finally:
        log.removeHandler(seen)
        log.setLevel(level)
    assert not [m for m in seen.messages if "litlogger" in m], seen.messages
    assert any(m.startswith("GPU available") for m in seen.messages), seen.messages
    assert sum(getattr(f, "__name__", "") == "_drop_litlogger_tip" for f in log.filters) == 1


def test_make_logger_passes_no_anonymous_setting(tmp_path, capfd):
    """Lightning turns any truthy `anonymous` into "allow" and hands wandb.init a None otherwise,
    which wandb warns about on every run: make_logger's wandb run gets no such setting."""
    import wandb

    from diffexp.runs.env import make_logger

    c = {"name": "t", "logger": {"name": "wandb", "project": "p", "entity": None, "group": None,
                                 "tags": [], "mode": "offline"}}
    logger = make_logger(c, tmp_path / "run", config={"a": 1})
    assert "anonymous" not in logger._wandb_init
    try:
        logger.experiment.log({"x": 1})
    finally:
        wandb.finish()
    out = capfd.readouterr()
    assert "anonymous" not in out.out + out.err


def _fit_with_lr_monitor(tmp_path, schedule: bool) -> set[str]:
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.loggers import CSVLogger

    from diffexp.runs.env import lr_monitor

    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            return self.lin(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=1e-3)
            if not schedule:
                return opt
            s = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": s, "interval": "step"}}

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)),
                                       batch_size=2)
    trainer = pl.Trainer(max_epochs=1, logger=CSVLogger(tmp_path, name="", version="csv"),
                         callbacks=[lr_monitor()], log_every_n_steps=1, accelerator="cpu",
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(M(), data)
    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    return {k for r in rows for k, v in r.items() if v}


@pytest.mark.parametrize("schedule", [False, True], ids=["constant", "scheduled"])
def test_the_learning_rate_is_logged_as_train_lr(tmp_path, schedule):
    """callbacks.lr_monitor's key is the one conf/callbacks/default.yaml documents, whatever the
    optimizer's class (Lightning's own key would be lr-AdamW here)."""
    keys = _fit_with_lr_monitor(tmp_path, schedule)
    assert "train/lr" in keys and not [k for k in keys if k.startswith("lr-")], keys
