"""scripts/tuning_table.py: one row per (model, sampler) of a tuning folder, settings read from each
model's config.yaml, sorted by FID; an empty folder is a one-line error and exit 2."""

import importlib.util
import json
from pathlib import Path

import yaml

from diffexp.config import validate_train_config

from .helpers import REPO, compose_train

spec = importlib.util.spec_from_file_location("tuning_table", REPO / "scripts" / "tuning_table.py")
tuning_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tuning_table)


def _cell(root: Path, stage: str, overrides: list[str], fids: dict[str, float], steps: int):
    job = root / stage / "0_job"
    job.mkdir(parents=True)
    cfg = validate_train_config(compose_train(overrides))
    (job / "config.yaml").write_text(yaml.safe_dump(cfg))
    (job / "summary.json").write_text(json.dumps(
        {"global_step": steps, "wall_time_s": 12.5, "host": {"torch_threads": 1}}))
    for label, fid in fids.items():
        d = job / "eval" / label
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"fid": fid, "kid_mean": 0.1, "n": 512, "nfe": 10}))


def test_rows_carry_each_models_settings_and_sort_by_fid(tmp_path):
    _cell(tmp_path, "a", ["train.batch_size=32", "data.pad=0"], {"x10": 30.0, "x20": 20.0}, 100)
    _cell(tmp_path, "b", ["objective=karras", "schedule=karras", "optim.lr=0.002",
                          "objective.sigma_data=2", "optim.betas=[0.9,0.99]"], {"x10": 25.0}, 50)
    rows = tuning_table.rows(tmp_path)
    assert [(r["cell"], r["fid"]) for r in rows] == [("a/x20", 20.0), ("b/x10", 25.0),
                                                     ("a/x10", 30.0)]
    a, b = rows[0], rows[1]
    assert (a["batch"], a["pad"], a["objective"], a["images"]) == (32, 0, "eps", 3200)
    assert (b["objective"], b["schedule"], b["lr"], b["pad"]) == ("karras", "karras", 0.002, 2)
    assert (a["widths"], a["blocks"], a["patch"]) == ("16/32/64", 1, 1)
    # sigma_data is objective=karras' own key: the eps cell has none
    assert (a["sigma_data"], a["beta2"], b["sigma_data"], b["beta2"]) == ("-", 0.999, 2, 0.99)
    md = tuning_table.markdown(rows).splitlines()
    assert len(md) == 2 + 3 and md[2].startswith("| a/x20 | eps |") and "| 20.00 |" in md[2]


def test_an_empty_folder_is_an_error(tmp_path, capsys):
    assert tuning_table.main([str(tmp_path)]) == 2
    assert "no */*/eval/*/metrics.json" in capsys.readouterr().err


def test_single_runs_are_rows_labelled_by_their_sampler(tmp_path):
    _cell(tmp_path, "stage", ["train.batch_size=32"], {"x10": 30.0}, 100)
    run = tmp_path / "quickstart_run"
    cfg = validate_train_config(compose_train(["experiment=quickstart"]))
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "summary.json").write_text(json.dumps(
        {"global_step": 7, "wall_time_s": 3.0, "host": {"torch_threads": 2}}))
    (run / "eval" / "metrics.json").write_text(
        json.dumps({"fid": 21.0, "kid_mean": 0.2, "n": 2048, "nfe": 10}))
    rows = tuning_table.rows(tmp_path)
    assert [(r["cell"], r["sampler"], r["n"]) for r in rows] == [
        ("quickstart_run", f"dpmpp_2m_{cfg['sampler']['steps']}", 2048), ("stage/x10", "x10", 512)]
    assert rows[0]["images"] == 7 * cfg["train"]["batch_size"] and rows[0]["threads"] == 2


def test_a_run_from_before_model_patch_reads_as_patch_one(tmp_path):
    _cell(tmp_path, "old", ["model.patch=2", "data.pad=2"], {"x10": 20.0}, 10)
    saved = tmp_path / "old" / "0_job" / "config.yaml"
    cfg = yaml.safe_load(saved.read_text())
    assert tuning_table.rows(tmp_path)[0]["patch"] == 2
    del cfg["model"]["patch"]
    saved.write_text(yaml.safe_dump(cfg))
    assert tuning_table.rows(tmp_path)[0]["patch"] == 1


def test_seeds_of_one_configuration_become_one_row_with_mean_and_std(tmp_path, capsys):
    for seed, fid in [(0, 10.0), (1, 12.0), (2, 14.0)]:
        _cell(tmp_path / "r1", f"s{seed}", [f"seed={seed}"], {"x10": fid}, 100)
    _cell(tmp_path / "r2", "lr", ["optim.lr=0.002"], {"x10": 11.0}, 100)  # another configuration
    _cell(tmp_path / "r2", "long", ["seed=1"], {"x10": 9.0}, 200)         # another length
    table = tuning_table.by_seed(tuning_table.rows(tmp_path / "r1") + tuning_table.rows(tmp_path / "r2"))
    assert [(r["cells"], r["seeds"]) for r in table] == [
        ("long/x10", "1"), ("lr/x10", "0"), ("s0/x10, s1/x10, s2/x10", "0/1/2")]
    assert table[2]["fid_mean"] == 12.0 and table[2]["fid_std"] == 2.0  # sample std (ddof 1)
    assert table[0]["fid_std"] is None
    assert tuning_table.main([str(tmp_path / "r1"), str(tmp_path / "r2"), "--seeds", "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 + 2 and out[3].endswith("| 11.00 |")


def test_a_rerun_of_one_seed_counts_once(tmp_path):
    for name, seed, fid in [("a", 0, 10.0), ("a_again", 0, 10.0), ("b", 1, 14.0)]:
        _cell(tmp_path, name, [f"seed={seed}"], {"x10": fid}, 100)
    (row,) = tuning_table.by_seed(tuning_table.rows(tmp_path))
    assert row["seeds"] == "0/1" and row["fid_mean"] == 12.0
    assert abs(row["fid_std"] - 2 ** 0.5 * 2) < 1e-12  # std of (10, 14), not of (10, 10, 14)
    assert row["cells"].count("/x10") == 3
