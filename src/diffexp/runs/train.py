"""Training a run folder from a validated config: :func:`train`.

The run folder receives: ``config.yaml`` (the whole resolved config, with
measured values such as sigma_data filled in), ``checkpoints/`` (``last.ckpt`` and one per
``callbacks.checkpoints``), ``samples/*.png``, ``losses.csv`` and ``loss.png``,
``summary.json``, and the logger's own files.

``last.ckpt`` is also refreshed mid-epoch (``train.checkpoint_every_minutes``,
``train.checkpoint_every_n_steps``) and when SIGTERM or SIGUSR1 stops the run (see
:mod:`diffexp.preemption`); a run resumed from any of them continues at the next batch and ends
bitwise as the uninterrupted run would.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import OmegaConf

from ..config import (
    ConfigError,
    fill_from_defaults,
    max_steps_of,
    optimizer_steps_per_epoch,
    validate_train_config,
)
from ..errors import first_line
from ..precision import cpu_bf16_warning, cpu_has_native_bf16
from ..say import say
from .env import lr_monitor, make_logger, publish_summary, record_wandb_run, wants_eval_at_end
from .record import host_info, model_record, write_summary

if TYPE_CHECKING:
    from .threads import ThreadPlan

__all__ = ["train", "evaluate_at_end", "check_resume", "resume_changes", "resume_config",
           "budget_planner",
           "write_config", "RESUME_FIXED", "RESUME_FREE"]


def _accelerator(tcfg: dict) -> str:
    acc = tcfg["accelerator"]
    if acc == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={acc!r} but no CUDA GPU is visible; "
                          f"use trainer.accelerator=cpu or auto")
    return "gpu" if acc == "cuda" else acc


def _precision(tcfg: dict, accelerator: str) -> str:
    """The precision the run trains in: ``auto`` is bf16-mixed on a GPU and 32-true on the CPU;
    ``bf16-if-native`` is bf16-mixed on a GPU and on a CPU with bf16 instructions (AVX512-BF16 or
    AMX), 32-true on other CPUs (where bf16 is emulated, several times slower)."""
    p = tcfg["precision"]
    if p == "auto":
        return "bf16-mixed" if accelerator == "gpu" else "32-true"
    if p == "bf16-if-native":
        native = accelerator == "gpu" or (accelerator == "cpu" and cpu_has_native_bf16())
        return "bf16-mixed" if native else "32-true"
    return p


class LossHistory:
    """Keeps the per-step training loss without a device sync per step (tensors are gathered at
    epoch end), and writes losses.csv and loss.png into the run folder."""

    def __init__(self):
        import pytorch_lightning as pl

        class _CB(pl.Callback):
            def __init__(cb):
                cb.pending: list[tuple[int, torch.Tensor]] = []
                cb.rows: list[tuple[int, int, float]] = []
                cb.val: list[tuple[int, int, float]] = []

            def on_train_batch_end(cb, trainer, module, outputs, batch, batch_idx):
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                # the index of the optimizer step just taken (global_step has already advanced)
                cb.pending.append((trainer.global_step - 1, loss.detach()))

            def on_train_start(cb, trainer, module):
                # a run resumed mid-epoch starts without on_train_epoch_start for that epoch
                cb.t0 = time.perf_counter()

            def on_train_epoch_start(cb, trainer, module):
                cb.t0 = time.perf_counter()

            def on_train_epoch_end(cb, trainer, module):
                if cb.pending:
                    vals = torch.stack([v for _, v in cb.pending]).float().cpu().tolist()
                    cb.rows += [(s, trainer.current_epoch, v)
                                for (s, _), v in zip(cb.pending, vals)]
                    cb.pending.clear()
                    if trainer.is_global_zero:
                        msg = (f"[diffexp] epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: "
                               f"mean train loss {sum(vals) / len(vals):.4f} over {len(vals)} "
                               f"steps, {time.perf_counter() - cb.t0:.1f}s")
                        bar = trainer.progress_bar_callback
                        if bar is not None:  # written above the bar, which stays whole
                            bar.print(msg)
                        say(msg, console=bar is None)

            def on_validation_epoch_end(cb, trainer, module):
                v = trainer.callback_metrics.get("val/loss")
                if v is not None and not trainer.sanity_checking:
                    cb.val.append((trainer.global_step, trainer.current_epoch, float(v)))

        self.callback = _CB()

    def write(self, run_dir: Path) -> dict:
        rows, val = self.callback.rows, self.callback.val
        from ..files import atomic_write_csv

        atomic_write_csv(run_dir / "losses.csv", [*(("train", *r) for r in rows),
                                                  *(("val", *r) for r in val)],
                         header=["split", "step", "epoch", "loss"])
        if rows:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            from ..viz import save_figure

            fig, ax = plt.subplots(figsize=(6, 3.5))
            steps = [r[0] for r in rows]
            losses = [r[2] for r in rows]
            ax.plot(steps, losses, lw=0.6, alpha=0.5, label="train (per step)")
            k = max(1, len(losses) // 50)
            if len(losses) > k:
                sm = [sum(losses[i:i + k]) / k for i in range(0, len(losses) - k + 1, k)]
                ax.plot(steps[k - 1::k][:len(sm)], sm, lw=1.5, label=f"train (mean of {k})")
            if val:
                ax.plot([v[0] for v in val], [v[2] for v in val], "o-", label="val")
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            ax.set_yscale("log")
            ax.legend()
            save_figure(fig, run_dir / "loss.png")
        last = rows[-max(1, len(rows) // 20):] if rows else []
        return {"final_train_loss": sum(r[2] for r in last) / len(last) if last else None,
                "final_val_loss": val[-1][2] if val else None, "steps": rows[-1][0] + 1
                if rows else 0}


class FidProxy:
    """Every ``train.fid_every_n_epochs`` epochs: a cheap FID/KID of ``train.fid_n_samples`` EMA
    samples against the test reference, logged as ``val/fid`` and ``val/kid`` (kept distinct from
    the final evaluation, which uses eval.n_samples and reports the floor)."""

    def __init__(self, every: int, n: int, best_path: Path | None = None):
        import pytorch_lightning as pl

        proxy = self

        class _CB(pl.Callback):
            def on_train_epoch_end(cb, trainer, module):
                epoch = trainer.current_epoch + 1
                if epoch % every and epoch < trainer.max_epochs:
                    return
                if not trainer.is_global_zero:
                    return
                from ..evaluation import evaluate_samples, make_evaluator, proxy_log_dict

                if proxy.evaluator is None:
                    proxy.evaluator = make_evaluator(module.spec.data.root, device=module.device)
                # sampler_cfg None: the run's own sampler and grid
                m, _, _ = evaluate_samples(module, proxy.evaluator, None, n=n,
                                           seed=module.spec.train.seed,
                                           batch_size=module.spec.train.batch_size)
                module.log_dict(proxy_log_dict(m), rank_zero_only=True)
                best = min((h["fid"] for h in proxy.history), default=math.inf)
                proxy.history.append({"epoch": epoch, "fid": m["fid"], "kid": m["kid_mean"],
                                      "precision": m.get("precision"),
                                      "recall": m.get("recall"), "n": n})
                say(f"[diffexp] epoch {epoch}: proxy FID {m['fid']:.2f} (n={n})")
                if best_path is not None and m["fid"] < best:
                    trainer.save_checkpoint(str(best_path))  # atomic (AtomicCheckpointIO)
                    say(f"[diffexp] best so far by val/fid: {best_path}")

        self.evaluator = None
        self.history: list[dict] = []
        self.callback = _CB()


def evaluate_at_end(c: dict, run_dir: Path, logger, ckpt: Path | None = None) -> dict:
    """Evaluate the final checkpoint (``ckpt``, default ``run_dir/checkpoints/last.ckpt``) with the
    sampler and grid of ``c``: into ``run_dir/eval``, or, when ``eval.samplers`` lists samplers,
    once per entry into ``run_dir/eval/<label>`` (diagnostics with the first only). The headline
    numbers also go to ``logger`` (``eval/fid`` or ``eval/<label>/fid``)."""
    from ..config import eval_defaults, validate_eval_config
    from .evaluate import run_eval

    settings = {**eval_defaults(), **{k: v for k, v in c["eval"].items() if k != "samplers"}}
    if settings["n_samples"] == "auto":  # the lesson's n where it is cheap, a quick one elsewhere
        settings["n_samples"] = 2048 if torch.cuda.is_available() else 512
    ckpt = ckpt or run_dir / "checkpoints" / "last.ckpt"

    def evaluate(sampler: dict, label: str, diagnostics: bool) -> dict:
        sampler = dict(sampler)
        ec = {"ckpt": str(ckpt), "seed": c["seed"],
              "name": c["name"], "data_root": c["data"].get("root"),
              "logger": {"name": "none", "extra": {}},
              "objective": {}, "eval": {**settings,
                                        "diagnostics": diagnostics and settings["diagnostics"]},
              "sampler": sampler, "grid": sampler.pop("grid", None) or c["grid"]}
        # validated as eval.py validates its config: code builds no config the checks have not seen
        ec = validate_eval_config(OmegaConf.create(ec))
        out = run_dir / "eval" / label if label else run_dir / "eval"
        m = run_eval(ec, out)
        prefix = f"eval/{label}/" if label else "eval/"
        if logger:
            flat = {prefix + k: m[k] for k in ("fid", "kid_mean", "kid_std", "nfe")}
            if m.get("floor"):
                flat[prefix + "floor_fid"] = m["floor"]["fid"]
            logger.log_metrics(flat)
            if hasattr(logger, "log_image"):  # the evaluation's sample grids beside its numbers
                for name in ("samples", "samples_by_class"):
                    if (out / f"{name}.png").is_file():
                        logger.log_image(key=prefix + name, images=[str(out / f"{name}.png")])
        keep = ("fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage",
                "class_tv", "class_confidence", "n", "nfe", "wall_time_s")
        return {k: m.get(k) for k in keep} | {"floor_fid": (m.get("floor") or {}).get("fid")}

    samplers = c["eval"]["samplers"]
    if not samplers:
        return evaluate(c["sampler"], "", diagnostics=True)
    return {label: evaluate(s, label, diagnostics=i == 0)
            for i, (label, s) in enumerate(samplers.items())}


def write_config(c: dict, run_dir: Path) -> Path:
    from ..files import atomic_write_text

    path = run_dir / "config.yaml"
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(c)))
    return path


#: what a resumed run continues and so may not change (unless resume.allow_changes names it)
RESUME_FIXED = ("task", "seed", "data", "model", "schedule", "objective")
#: settings inside those groups that say how or where, not what, is trained
RESUME_FREE = {"data.root", "data.download", "model.compile", "model.channels_last",
               "objective.noise_level_ckpt", "objective.use_predicted_noise_level"}


def _flatten(value, prefix: str) -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def _same_setting(key: str, old, new) -> bool:
    if key == "objective.sigma_data":
        # measured at the start of a run: "auto" (or none) continues the measured value
        return new in ("auto", None) or old in ("auto", None) or float(old) == float(new)
    if key == "objective.sigma_data_factor":  # 1 and none (before the setting) both mean "as is"
        return (1.0 if old is None else float(old)) == (1.0 if new is None else float(new))
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) \
            and not isinstance(old, bool) and not isinstance(new, bool):
        return float(old) == float(new)
    return old == new


def resume_changes(old: dict, new: dict, groups=RESUME_FIXED) -> list[tuple[str, object, object]]:
    """The settings of ``groups`` whose value in ``new`` differs from the resumed run's ``old``,
    as (dotted key, old value, new value)."""
    if new.get("task") == "noise_level":
        groups = (*groups, "noise_level")
    a = {k: v for g in groups for k, v in _flatten(old.get(g), g).items()}
    b = {k: v for g in groups for k, v in _flatten(new.get(g), g).items()}
    out = []
    # a group's name first (a changed schedule is reported as schedule.name, not as the first
    # parameter it does not share); a key missing on one side counts as None there
    for key in sorted(set(a) | set(b), key=lambda k: (k.split(".")[0], not k.endswith(".name"), k)):
        if key not in RESUME_FREE and not _same_setting(key, a.get(key), b.get(key)):
            out.append((key, a.get(key), b.get(key)))
    return out


def check_resume(c: dict) -> None:
    """A resumed run continues the same training: the checkpoint must be a readable diffexp
    checkpoint of the same task, and data, model, schedule, objective and seed must not change
    (``resume.allow_changes=[key or group, ...]`` lets named ones change); a resumed LR schedule
    keeps its length."""
    if not c["ckpt_path"]:
        return
    from ..build import upgrade_config
    from ..checkpoint_io import read_checkpoint

    ckpt = read_checkpoint(c["ckpt_path"], setting="ckpt_path", task=c["task"])
    old = upgrade_config(ckpt["hyper_parameters"]["cfg"])
    allowed = c.get("resume", {}).get("allow_changes") or []
    for key, was, now in resume_changes(old, c):
        if any(key == a or key.startswith(a + ".") for a in allowed):
            say(f"[diffexp] resume: {key} changed from {was!r} to {now!r} "
                f"(resume.allow_changes)")
            continue
        raise ConfigError(
            f"{key}={now!r} differs from the resumed run's {was!r} ({c['ckpt_path']}); a resume "
            f"continues the same training: change it back, or add resume.allow_changes=[{key}]")
    if c["optim"]["lr_schedule"] != "constant" and old["train"]["epochs"] != c["train"]["epochs"]:
        raise ConfigError(
            f"train.epochs={c['train']['epochs']} differs from the resumed run's "
            f"{old['train']['epochs']}; a resumed {c['optim']['lr_schedule']} LR schedule keeps "
            f"its length (use optim.lr_schedule=constant to extend a run)")


def checkpoint_callbacks(c: dict, ckpt_dir: Path) -> list:
    """The checkpoints a run keeps (``callbacks.checkpoints``): ``last.ckpt`` at each epoch end
    and ``epochNNN.ckpt`` every K epochs and at the last epoch (``best.ckpt`` is written by
    :class:`FidProxy`), plus one ModelCheckpoint per mid-epoch interval that only refreshes
    last.ckpt. Several callbacks write last.ckpt, so none may version the name (last-v1.ckpt)
    when it finds the file another one wrote."""
    import time
    from datetime import timedelta

    from pytorch_lightning.callbacks import ModelCheckpoint

    from ..preemption import StepCadence, after_epochs_last_step, needs_agreement

    t = c["train"]
    k = c["callbacks"]["checkpoints"]["every_k_epochs"]

    class EpochCheckpoints(ModelCheckpoint):
        """epochNNN.ckpt every K epochs and at the final epoch; last.ckpt at every epoch end."""

        def on_train_epoch_end(self, trainer, module):
            if self._should_skip_saving_checkpoint(trainer):
                return
            candidates = self._monitor_candidates(trainer)
            epoch = trainer.current_epoch + 1
            if k and (epoch % k == 0 or epoch >= (trainer.max_epochs or epoch)):
                self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)

        def on_train_end(self, trainer, module):
            # Lightning's writes last.ckpt after a fast_dev_run too, where a later run in the
            # same folder would resume the smoke run's weights
            if not trainer.fast_dev_run:
                super().on_train_end(trainer, module)

    class MidEpochCheckpoint(ModelCheckpoint):
        """last.ckpt every N steps / minutes, never after an epoch's last step (see
        ``preemption.after_epochs_last_step``): EpochCheckpoints writes it right after. Under
        DDP the ranks agree whether the minutes are up on a StepCadence's steps only (about one
        a second, at most every 100 steps), not with Lightning's broadcast on every step."""

        cadence = None

        def on_train_start(self, trainer, module):
            super().on_train_start(trainer, module)
            self.cadence = StepCadence()
            self.cadence.start(trainer.global_step)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if after_epochs_last_step(trainer):
                return
            if self._train_time_interval is None:  # steps: Lightning's, no collective
                return super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
            now = time.monotonic()
            due = now - self._last_time_checked >= self._train_time_interval.total_seconds()
            if needs_agreement(trainer):
                if not self.cadence.due(trainer.global_step):
                    return
                due = bool(self.cadence.agree(trainer, [int(due)])[0])
            if not due:
                return
            self._last_time_checked = now
            if not self._should_skip_saving_checkpoint(trainer):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

        def on_train_end(self, trainer, module):
            # Lightning's would write last.ckpt here when this callback has not written it in
            # this process (a resume within the last epoch): after fit, with the epoch counter
            # one past the end; the epoch-end one already holds the final state
            pass

    cbs = [EpochCheckpoints(dirpath=str(ckpt_dir), filename="epoch{epoch:03d}",
                            auto_insert_metric_name=False, save_last=True, save_top_k=-1,
                            save_on_train_epoch_end=True, enable_version_counter=False)]
    if t["checkpoint_every_n_steps"]:
        cbs.append(MidEpochCheckpoint(dirpath=str(ckpt_dir), save_last=True, save_top_k=0,
                                      every_n_train_steps=int(t["checkpoint_every_n_steps"]),
                                      enable_version_counter=False))
    if t["checkpoint_every_minutes"]:
        cbs.append(MidEpochCheckpoint(
            dirpath=str(ckpt_dir), save_last=True, save_top_k=0, enable_version_counter=False,
            train_time_interval=timedelta(minutes=float(t["checkpoint_every_minutes"]))))
    return cbs


def budget_planner(c: dict, data, run_dir: Path, threads: ThreadPlan | None = None):
    """``train.time_budget_s``: the :class:`~diffexp.runs.budget.BudgetPlanner` that fixes the
    run's step count from its own pace, or None (no budget; a given ``trainer.max_steps`` wins,
    as in a run's own config.yaml once planned; a fast_dev_run smoke run). A run resumed from a
    checkpoint continues the planner's state that the checkpoint carries."""
    from .budget import BudgetPlanner

    budget = c["train"].get("time_budget_s")
    if not budget:
        return None
    tr, t = c["trainer"], c["train"]
    if tr.get("fast_dev_run"):
        say(f"[diffexp] train.time_budget_s={budget:g}: not planned in a fast_dev_run")
        return None
    given = max_steps_of(tr)
    if given is not None:
        say(f"[diffexp] train.time_budget_s={budget:g}: trainer.max_steps={given} is given, so "
            f"the run does not plan its length")
        return None
    if c["ckpt_path"]:
        from ..checkpoint_io import read_checkpoint

        old = read_checkpoint(c["ckpt_path"], setting="ckpt_path", task=c["task"])
        steps = max_steps_of(old["hyper_parameters"]["cfg"].get("trainer", {}))
        if steps is not None:  # planned before training began (a run of an earlier version)
            say(f"[diffexp] train.time_budget_s={budget:g}: the resumed run trains the "
                f"{steps} steps its budget fixed")
            tr["max_steps"] = steps
            return None
        if "BudgetPlanner" not in (old.get("callbacks") or {}):
            raise ConfigError(f"train.time_budget_s={budget:g}: the resumed checkpoint "
                              f"{c['ckpt_path']} was not trained to a time budget; set "
                              f"trainer.max_steps, or drop train.time_budget_s")
    per_epoch, _ = optimizer_steps_per_epoch(len(data.train_index) // t["batch_size"], tr)
    least = 3 if c["optim"]["lr_schedule"] == "onecycle" else 1

    def record(plan: dict) -> None:  # the plan becomes part of the run's config
        c["trainer"]["max_steps"] = plan["steps"]
        c["optim"]["hold_steps"] = plan["hold_steps"]
        if "threads" in plan:
            c["train"]["threads"] = plan["threads"]
            c["train"]["trial_steps"] = plan["trial_steps"]
        write_config(c, run_dir)

    return BudgetPlanner(budget, per_epoch * t["epochs"], least, t["batch_size"], per_epoch,
                         on_plan=record, threads=threads)


def thread_plan(c: dict, accelerator: str, budgeted: bool):
    """The :class:`~diffexp.runs.threads.ThreadPlan` of the run's thread settings, or None
    (torch's own count throughout). A budgeted CPU run with more than one torch thread and no
    thread setting given tries torch's count and one on its first steps (recorded in
    ``train.trial_threads``); the budget's planner keeps the faster (runs/budget.py)."""
    from .threads import ThreadPlan

    t = c["train"]
    if budgeted and accelerator == "cpu" and t["threads"] is None and not t["trial_threads"] \
            and torch.get_num_threads() > 1:
        t["trial_threads"] = [torch.get_num_threads(), 1]
    if t["threads"] is None and not t["trial_threads"]:
        return None
    if t["threads"] is not None:  # the evaluation and what else runs outside the steps
        torch.set_num_threads(int(t["threads"]))
    trial_steps = t["trial_steps"] if t["trial_steps"] is not None or not budgeted else None
    return ThreadPlan(trial_steps, t["trial_threads"], t["threads"])


def trainer_arguments(tr: dict) -> dict:
    """The ``trainer.*`` keys that are not diffexp's own, checked against Lightning's
    ``Trainer`` signature (a typo is a one-line error with the closest names)."""
    import difflib
    import inspect

    import pytorch_lightning as pl

    from ..config import TrainerCfg

    valid = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    extra = {k: v for k, v in tr.items() if k not in TrainerCfg.__dataclass_fields__}
    for key in extra:
        if key not in valid:
            near = difflib.get_close_matches(key, sorted(valid), n=3)
            raise ConfigError(f"trainer.{key} is not an argument of Lightning's Trainer"
                              + (f"; did you mean {', '.join('trainer.' + n for n in near)}?"
                                 if near else ""))
    return extra


def check_user_network(c: dict, module) -> None:
    """A ``model._target_`` network denoises a batch of two images of the run's size (through
    the objective, as training and sampling call it) and returns their shape; else one line
    naming the setting, before any work."""
    target = c["model"].get("_target_")
    if target is None:
        return
    from ..build import image_side
    from ..objectives import make_denoiser

    side = image_side(c["data"]["pad"])
    x = torch.zeros(2, 1, side, side)
    contract = "forward(x, cond) -> a tensor of x's shape (docs/EXTENDING.md)"
    try:
        with torch.no_grad():
            out = make_denoiser(module.net, module.objective)(x, torch.ones(2))
    except Exception as e:  # the user's network: any error, as one line
        raise ConfigError(f"model._target_={target}: the network failed on a batch of shape "
                          f"{tuple(x.shape)} ({type(e).__name__}: {first_line(e)}); the "
                          f"contract: {contract}") from None
    if out.shape != x.shape:
        raise ConfigError(f"model._target_={target}: the network returned shape "
                          f"{tuple(out.shape)} for input {tuple(x.shape)}; the contract: "
                          f"{contract}")


def user_components(c: dict, run_dir: Path) -> tuple[list, list]:
    """``(callbacks, loggers)`` of ``callbacks.extra`` and ``logger.extra`` (components.py): a
    logger whose class takes a ``save_dir`` and is not given one writes into the run folder."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import Logger

    from ..components import build

    callbacks = [build(e, f"callbacks.extra.{k}", pl.Callback)
                 for k, e in (c["callbacks"].get("extra") or {}).items()]
    loggers = [build(e, f"logger.extra.{k}", Logger, save_dir=str(run_dir))
               for k, e in (c["logger"].get("extra") or {}).items()]
    return callbacks, loggers


def progress_callbacks(c: dict) -> tuple[list, bool]:
    """``(callbacks, enable_progress_bar)`` for ``callbacks.progress_bar`` and the LR monitor."""
    cb = c["callbacks"]
    extra = []
    if cb["lr_monitor"] and (c["logger"]["name"] != "none" or c["logger"].get("extra")):
        extra.append(lr_monitor())
    bar = cb["progress_bar"]
    if bar == "rich":
        from pytorch_lightning.callbacks import RichProgressBar

        extra.append(RichProgressBar())
        return extra, True
    if bar == "auto":
        return extra, sys.stderr.isatty()
    return extra, bar == "tqdm"


def _cluster_plugins() -> list:
    """Under srun Lightning would pick SLURMEnvironment with its own auto-requeue, which saves
    from inside the signal handler at an arbitrary point into hpc_ckpt_*.ckpt; the environment
    (ranks, world size) is kept and the requeue left to :class:`PreemptionGuard`."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def train(c: dict, run_dir: str | Path, callbacks: list | None = None,
          run_name: str | None = None) -> dict:
    """Train from a validated config dict; return the summary written to summary.json.
    ``callbacks``: extra Lightning callbacks (programmatic use and tests); ``run_name``: the
    logger's name for the run (default: the config's name, with the job folder in a sweep).

    SIGTERM or SIGUSR1 stops training at the end of the current step with ``last.ckpt`` written,
    and raises :class:`~diffexp.preemption.Preempted` (a SystemExit with status 128 + signal)."""
    from ..preemption import Preempted, PreemptionGuard

    guard = PreemptionGuard(Path(run_dir) / "checkpoints" / "last.ckpt")
    guard.install()
    try:
        return _train(c, run_dir, callbacks, guard, run_name)
    except Preempted as e:
        guard.finish(e.signum)
        raise
    finally:
        guard.restore()


def _train(c: dict, run_dir: str | Path, callbacks: list | None, guard,
           run_name: str | None = None) -> dict:
    import pytorch_lightning as pl

    from ..build import diffusion_spec, noise_level_spec, thawed
    from ..checkpoint_io import AtomicCheckpointIO
    from ..data import DataError, build_data
    from ..guards import DivergenceGuard
    from ..module import AlphaBarModule, DiffusionModule, describe
    from ..preemption import Preempted

    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if c["ckpt_path"] is None and last.is_file() and c["train"]["auto_resume"]:
        # a requeued or restarted job in its own stable folder continues where it stopped
        say(f"[diffexp] resuming from {last} (train.auto_resume=true)")
        c["ckpt_path"] = str(last)
    check_resume(c)
    passthrough = trainer_arguments(c["trainer"])  # before any work: a typo fails now
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = _accelerator(c["trainer"])
    precision = _precision(c["trainer"], accelerator)
    c["trainer"]["precision"] = precision
    slow = cpu_bf16_warning(precision, "cuda" if accelerator == "gpu" else accelerator,
                            "trainer.precision")
    if slow:
        say(f"[diffexp] warning: {slow}")
    pl.seed_everything(c["seed"], workers=True, verbose=False)
    try:
        data = build_data(c["data"], train=True)
    except DataError as e:
        raise ConfigError(str(e)) from None
    planner = threads = None
    if c["task"] == "noise_level":
        module = AlphaBarModule(noise_level_spec(c, precision=precision))
        say(f"[diffexp] noise-level predictor (target={c['noise_level']['target']}): "
            f"{sum(p.numel() for p in module.net.parameters()):,} parameters; {run_dir}")
    else:
        spec = diffusion_spec(c, data, precision=precision)
        measured = spec.config["objective"].get("sigma_data")
        if c["objective"].get("sigma_data") == "auto":
            factor = c["objective"]["sigma_data_factor"]
            say(f"[diffexp] objective.sigma_data=auto -> {measured:.4f} (measured std of the "
                f"training data, scale={c['data']['scale']}, pad={c['data']['pad']})"
                + (f"; the objective uses {measured:.4f} x {factor:g}" if factor != 1 else ""))
        c = thawed(spec.config)
        budgeted = bool(c["train"].get("time_budget_s")) and not c["trainer"].get(
            "fast_dev_run") and max_steps_of(c["trainer"]) is None
        threads = thread_plan(c, accelerator, budgeted)
        planner = budget_planner(c, data, run_dir, threads)
        if planner is None and threads is not None and threads.trying:
            threads.trial_steps = 0  # no planner to end a trial: torch's count throughout
        passthrough.update({k: c["trainer"][k] for k in ("max_steps",) if k in c["trainer"]})
        module = DiffusionModule(spec)
        check_user_network(c, module)
        module.length_set_by_budget = planner is not None
        if spec.no_t is not None and spec.no_t.use_predicted_noise_level:
            module.noise_level_net()  # its checkpoint fits this model: checked before work
        say(f"[diffexp] {describe(module)}; run folder {run_dir}")
    write_config(c, run_dir)
    module.attach_data(data, run_dir)
    logger = make_logger(c, run_dir, name=run_name)
    record_wandb_run(logger, run_dir)
    user_cbs, user_loggers = user_components(c, run_dir)
    n_params = sum(p.numel() for p in module.net.parameters())
    if logger:
        logger.log_hyperparams({"parameters": n_params})
    for lg in user_loggers:
        lg.log_hyperparams({**c, "parameters": n_params})
    history = LossHistory()
    t = c["train"]
    extra = [history.callback]
    proxy = None
    if t["fid_every_n_epochs"] and c["task"] == "diffusion":
        best = c["callbacks"]["checkpoints"]["best"] == "val/fid"
        proxy = FidProxy(t["fid_every_n_epochs"], t["fid_n_samples"],
                         run_dir / "checkpoints" / "best.ckpt" if best else None)
        extra.append(proxy.callback)
    ckpt_cbs = checkpoint_callbacks(c, run_dir / "checkpoints")
    monitors, progress_bar = progress_callbacks(c)
    tr = c["trainer"]
    trainer = pl.Trainer(
        max_epochs=t["epochs"], accelerator=accelerator, devices=tr["devices"],
        strategy=tr["strategy"], num_nodes=tr["num_nodes"], precision=precision,
        gradient_clip_val=t["grad_clip"] or None,
        logger=[*([logger] if logger else []), *user_loggers] if user_loggers else logger,
        # the divergence guard after the others: it judges the gradients every other hook has
        # seen (and refuses any checkpoint, the preemption guard's included, of diverged weights)
        callbacks=[*ckpt_cbs, *extra, *monitors, *(callbacks or []), *user_cbs,
                   *([planner.callback] if planner else []),
                   *([threads.callback] if threads else []),
                   DivergenceGuard(t["skip_nonfinite"], str(last)), guard.callback],
        default_root_dir=str(run_dir),
        log_every_n_steps=tr["log_every_n_steps"],
        limit_train_batches=tr["limit_train_batches"], limit_val_batches=tr["limit_val_batches"],
        check_val_every_n_epoch=t["val_every_n_epochs"] or None,
        num_sanity_val_steps=0, deterministic=tr["deterministic"], enable_model_summary=False,
        plugins=[AtomicCheckpointIO(), *_cluster_plugins()],
        enable_progress_bar=progress_bar, **passthrough)
    t0 = time.perf_counter()
    trainer.fit(module, ckpt_path=c["ckpt_path"])
    if guard.signum is not None:
        # the signal came after the last step (final validation or sample grid): last.ckpt is
        # the finished model; a resumed job goes straight to what follows training
        raise Preempted(guard.signum)
    wall = time.perf_counter() - t0
    summary = {"name": c["name"], "wall_time_s": round(wall, 2), "epochs": trainer.current_epoch,
               "global_step": trainer.global_step, "device": accelerator, "precision": precision,
               "host": host_info(),
               "parameters": n_params,
               **{k: v for k, v in model_record(c).items() if k.startswith("sigma_data")},
               "checkpoint": str(run_dir / "checkpoints" / "last.ckpt")}
    if proxy is not None:
        summary["fid_proxy"] = proxy.history
    if planner is not None and planner.plan is not None:
        spent = planner.spent()  # this process's fit and what a resumed run had spent before
        summary["time_budget"] = {**planner.plan, "train_s": round(spent, 2)}
        say(f"[diffexp] train.time_budget_s={planner.budget_s:g}: {trainer.global_step} steps; "
            f"training took {spent:.1f} s with its validation and sample grids "
            f"({spent / planner.budget_s:.0%} of the budget)")
    fast_dev_run = bool(c["trainer"].get("fast_dev_run"))
    if fast_dev_run and wants_eval_at_end(c) and c["task"] == "diffusion":
        say("[diffexp] trainer.fast_dev_run: a smoke run (no checkpoints, sample grids or "
            "end-of-run evaluation)")
    elif wants_eval_at_end(c) and c["task"] == "diffusion" and trainer.world_size > 1:
        # the metrics would synchronise across processes the other ranks have left
        if trainer.is_global_zero:
            say(f"[diffexp] no end-of-run evaluation in a {trainer.world_size}-process run: "
                f"python eval.py ckpt={run_dir / 'checkpoints' / 'last.ckpt'}")
    elif wants_eval_at_end(c) and c["task"] == "diffusion" and trainer.is_global_zero:
        summary["eval"] = evaluate_at_end(c, run_dir, logger)
    if c["task"] == "noise_level":
        h = module.held_out(n=2048)
        summary["held_out"] = {k: v for k, v in h.items() if not isinstance(v, torch.Tensor)}
    if trainer.is_global_zero:
        summary.update(history.write(run_dir))
        write_summary(run_dir, summary)
        say(f"[diffexp] done in {wall:.1f}s: final train loss {summary['final_train_loss']}, "
            f"val loss {summary['final_val_loss']}; {run_dir}")
    if logger and c["logger"]["name"] == "wandb":
        publish_summary(logger, summary)
        # close this job's wandb run: the next job of a multirun in this process starts its own
        logger.experiment.finish()
    return summary


def resume_config(run: str | Path) -> dict:
    """``resume=RUN_DIR``: that run's own resolved config, to continue in its own folder from its
    last checkpoint (weights, optimizer, LR schedule, EMA, step, wandb run id)."""
    from ..build import upgrade_config

    run = Path(run)
    saved, last = run / "config.yaml", run / "checkpoints" / "last.ckpt"
    if not saved.is_file() or not last.is_file():
        raise ConfigError(f"resume={str(run)!r} is not a run folder with config.yaml and "
                          f"checkpoints/last.ckpt")
    try:
        old = upgrade_config(OmegaConf.to_container(OmegaConf.load(saved)))
    except Exception as e:  # noqa: BLE001 - a damaged yaml file: say which file and why
        first = first_line(e)
        raise ConfigError(f"resume={str(run)!r}: its config.yaml cannot be read ({first})") from None
    if not isinstance(old, dict) or not {"data", "model", "objective"} <= set(old):
        raise ConfigError(f"resume={str(run)!r}: its config.yaml is not a diffexp training config")
    old["ckpt_path"] = str(last)
    old["resume"] = {"run": str(run), "allow_changes": []}
    filled = fill_from_defaults(old)
    if filled:
        say(f"[diffexp] resume: {', '.join(filled)} did not exist when {run} was written; "
            f"today's defaults apply")
    return validate_train_config(OmegaConf.create(old))
