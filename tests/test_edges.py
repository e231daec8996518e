"""Edge values for every numeric setting of the model-defining groups: each value either fails at
validation, with a one-line ConfigError naming the key, or validates and then trains one step and
samples without error and with finite numbers. A setting that passes validation and breaks later
is the defect this test exists to catch (e.g. a schedule whose smallest noise level is 0 used to
validate, train a whole epoch and fail at its first sample grid)."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from diffexp.config import ConfigError, group_options, validate_train_config
from diffexp.data import build_data
from diffexp.module import DiffusionModule

from .helpers import compose_train

BASE = ["data=synthetic", "data.subset=40", "data.val_size=8", "model.widths=[8]",
        "model.blocks=1", "model.attn_levels=[]", "model.head_dim=8", "sampler.steps=3",
        "train.batch_size=4", "eval.n_samples=4", "eval.batch_size=4"]
FLOAT_EDGES = ["-1.0", "0.0", "1e-09", "0.5", "1e+09", "nan", "inf"]
INT_EDGES = ["-1", "0", "1", "2"]
#: numbers that only bound work (steps, sizes) get small edges: a huge value is valid, just slow
SIZE_KEYS = {"sampler.steps", "data.subset", "data.val_size", "model.blocks", "model.head_dim",
             "data.pad", "data.split_seed"}


def _numeric_keys(cfg, group: str) -> list[tuple[str, object]]:
    node = OmegaConf.to_container(cfg[group], resolve=True)
    return [(f"{group}.{k}", v) for k, v in node.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _contexts() -> list[tuple[list[str], str]]:
    """(overrides choosing the options, group whose numeric keys are varied)."""
    out = [([f"schedule={s}"], "schedule") for s in group_options("schedule")]
    out += [([f"objective={o}", "schedule=karras"], "objective")
            for o in ("karras",)]
    out += [(["objective=no_t", "objective.use_predicted_noise_level=false"], "objective")]
    out += [([f"grid={g}", "grid.sigma_min=0.01", "grid.sigma_max=50"], "grid")
            for g in group_options("grid") if g != "ckpt"]
    out += [(["grid=karras", "schedule=karras"], "grid")]
    no_t = ["objective=no_t", "objective.use_predicted_noise_level=false"]
    out += [([f"sampler={s}", *(no_t if s == "ddim_no_t_lesson" else [])], "sampler")
            for s in group_options("sampler") if s != "ckpt"]
    out += [([], "data"), ([], "model")]
    return out


def _cases():
    """(options chosen, key, edge as written, the composed config with the edge set)."""
    for choose, group in _contexts():
        cfg = compose_train([*BASE, *choose])
        for key, value in _numeric_keys(cfg, group):
            integer = isinstance(value, int)
            edges = INT_EDGES if integer or key in SIZE_KEYS else FLOAT_EDGES
            for edge in edges:
                # set on a copy of the composed tree (what Hydra's override does, without a
                # re-composition per case)
                edged = OmegaConf.create(OmegaConf.to_container(cfg))
                OmegaConf.update(edged, key, int(edge) if edges is INT_EDGES else float(edge))
                yield choose, key, edge, edged


def _one_step_and_sample(c: dict) -> None:
    if c["objective"]["name"] == "karras" and c["objective"]["sigma_data"] == "auto":
        c["objective"]["sigma_data"] = 0.5
    torch.manual_seed(0)
    module = DiffusionModule.from_config(c)
    data = build_data(c["data"], train=True)
    x0 = data.batch(data.train_index[:4])
    loss = module.diffusion_loss(x0)
    assert torch.isfinite(loss), f"loss {loss.item()}"
    loss.backward()
    x, _, nfe = module.generate(2, seed=0, batch_size=2)
    assert torch.isfinite(x).all(), "non-finite samples"
    assert nfe >= 1


@pytest.mark.slow  # tens of seconds on 2 cores: with make test-slow
def test_every_numeric_edge_fails_at_validation_or_runs(one_thread):
    tried, refused, ran, broken = 0, 0, 0, []
    for choose, key, edge, cfg in _cases():
        tried += 1
        try:
            c = validate_train_config(cfg)
        except ConfigError as e:
            msg = str(e)
            if "\n" in msg or not msg.startswith(key.split(".")[0] + "."):
                broken.append(f"{' '.join(choose)} {key}={edge}: unclear refusal: {msg}")
            refused += 1
            continue
        except Exception as e:  # noqa: BLE001 - validation itself must not crash
            broken.append(f"{' '.join(choose)} {key}={edge}: validation crashed: "
                          f"{type(e).__name__}: {e}")
            continue
        try:
            _one_step_and_sample(c)
            ran += 1
        except Exception as e:  # noqa: BLE001 - collected and reported below
            broken.append(f"{' '.join(choose)} {key}={edge}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}")
    assert not broken, (f"{len(broken)} of {tried} edge values were refused unclearly or validated "
                        f"and then failed:\n" + "\n".join(broken))
    assert refused > 0 and ran > 0 and tried == refused + ran


@pytest.mark.parametrize("edge", ["0", "0.0"])
def test_schedule_t_min_zero_is_refused_before_training(edge):
    with pytest.raises(ConfigError, match="schedule.t_min"):
        validate_train_config(compose_train([*BASE, "schedule=cosine", f"schedule.t_min={edge}"]))


def test_finite_noise_levels_of_valid_vp_schedules():
    c = validate_train_config(compose_train([*BASE, "schedule=linear", "schedule.t_min=1e-9"]))
    module = DiffusionModule.from_config(c)
    assert module.schedule.sigma_min > 0 and math.isfinite(module.schedule.sigma_max)
    # the closed form: sigma(t)^2 = 1 / abar(t) - 1 = expm1(beta_min t + (beta_max - beta_min) t^2 / 2)
    s = c["schedule"]

    def sigma(t):
        return math.sqrt(math.expm1(s["beta_min"] * t + 0.5 * (s["beta_max"] - s["beta_min"]) * t * t))

    assert module.schedule.sigma_min == pytest.approx(sigma(1e-9), rel=1e-4)  # about 1e-5
    assert module.schedule.sigma_max == pytest.approx(sigma(s["t_max"]), rel=1e-9)


#: the run-level groups: their numbers act inside Lightning's loop, so each validated edge value
#: runs a real (tiny) training with its end-of-run evaluation
RUN_BASE = [*BASE, "debug=fast", "logger=none", "trainer.limit_train_batches=3",
            "train.epochs=1", "train.eval_at_end=true", "eval.n_samples=4", "eval.floor=false",
            "eval.diagnostics=false", "train.fid_n_samples=4", "train.n_sample_images=2"]
RUN_INT_EDGES = ["-1", "0", "1", "3"]


@pytest.mark.slow
@pytest.mark.parametrize("group", ["optim", "train", "trainer", "eval"])
def test_every_numeric_edge_of_the_run_groups_fails_at_validation_or_trains(tmp_path, one_thread,
                                                                           group):
    from diffexp.guards import TrainingDiverged
    from diffexp.runs.train import train

    base = compose_train(RUN_BASE)
    broken, tried, ran = [], 0, 0
    for key, value in _numeric_keys(base, group):
        if key == "trainer.devices":  # > 1 starts processes (the DDP tests cover that)
            continue
        integer = isinstance(value, int)
        for edge in RUN_INT_EDGES if integer else FLOAT_EDGES:
            tried += 1
            cfg = OmegaConf.create(OmegaConf.to_container(base))
            OmegaConf.update(cfg, key, int(edge) if integer else float(edge))
            try:
                c = validate_train_config(cfg)
            except ConfigError as e:
                if "\n" in str(e) or not str(e).startswith(group + "."):
                    broken.append(f"{key}={edge}: unclear refusal: {e}")
                continue
            except Exception as e:  # noqa: BLE001
                broken.append(f"{key}={edge}: validation crashed: {type(e).__name__}: {e}")
                continue
            try:
                s = train(c, tmp_path / f"{key}={edge}")
                assert s["global_step"] >= 1 and math.isfinite(s["eval"]["fid"])
                ran += 1
            except TrainingDiverged as e:
                # a valid but absurd learning rate: the guarded outcome is this one line
                if key != "optim.lr" or "\n" in str(e):
                    broken.append(f"{key}={edge}: {e}")
                ran += 1
            except Exception as e:  # noqa: BLE001
                broken.append(f"{key}={edge}: {type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0]}")
    assert not broken, f"{len(broken)} of {tried}:\n" + "\n".join(broken)
    assert ran > 0


def test_only_the_widths_with_attention_must_split_into_heads():
    """Heads of model.head_dim channels exist at the attn_levels and in the middle block (the
    last width); the other widths are free, and a width that cannot split is named with the
    remedy."""
    ok = validate_train_config(compose_train(
        ["model.widths=[12,24,48]", "model.attn_levels=[2]", "model.head_dim=16"]))
    assert ok["model"]["widths"] == [12, 24, 48]
    for widths, attn in (("[16,24,48]", "[1]"), ("[16,32,40]", "[]")):
        with pytest.raises(ConfigError, match=r"model.widths at the levels with attention .*"
                                              r"multiples of model.head_dim=16; change"):
            validate_train_config(compose_train(
                [f"model.widths={widths}", f"model.attn_levels={attn}", "model.head_dim=16"]))
