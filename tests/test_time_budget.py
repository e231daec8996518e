"""train.time_budget_s: the step count a budget fits (arithmetic), the pace's robustness, the held
LR schedule (its values, a late commit, resume), a budgeted run end to end (its recorded plan
trains the same weights), the settings' checks; and trainer.precision=bf16-if-native. The kill
and restart of a budgeted run is in test_reliability.py."""

import json

import pytest
import torch
import yaml

from diffexp.config import ConfigError, validate_train_config
from diffexp.lr_schedule import HeldSchedule
from diffexp.runs import train as train_mod
from diffexp.runs.budget import choose_threads, robust_pace, steps_for_budget
from diffexp.runs.threads import ThreadPlan, threads_for_step
from diffexp.runs.train import budget_planner, train

from .helpers import TINY_MODEL, compose_train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _cfg(*extra):
    return validate_train_config(compose_train(
        ["data=synthetic", "data.subset=1000", "logger=none", *TINY_MODEL,
         "trainer.accelerator=cpu", "train.batch_size=16", "train.epochs=2",
         "train.eval_at_end=false", "train.n_sample_images=4", "sampler.steps=2", *extra]))


# ------------------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize("left,pace,done,cap,want", [
    (400, 0.1, 0, 10_000, 4000),      # exactly 4,000 steps fit
    (405, 0.1, 0, 10_000, 4050),      # 4,050 fit: three significant digits already
    (399.9, 0.1, 0, 10_000, 3990),    # 3,999 fit: rounded down to 3,990
    (342, 0.072, 527, 7250, 5270),    # 527 done + 4,750 that fit = 5,277: 5,270
    (327, 0.2971, 93, 3625, 1190),    # 93 done + 1,100 that fit = 1,193: 1,190 (not 1,100)
    (400, 0.1, 0, 3625, 3625),        # the epochs' cap
    (5, 0.1, 0, 3625, 50),            # under three digits: the steps that fit
    (5, 0.1, 90, 3625, 140),          # 140 fit
    (1.2, 0.3, 1188, 5000, 1192),     # 1,192: 1,190 would leave 2 of the 3 needed, not rounded
    (0.1, 0.1, 90, 3625, 93),         # nothing left: the schedule's 3 steps after the held ones
])
def test_steps_for_budget(left, pace, done, cap, want):
    assert steps_for_budget(left, pace, done, cap, least=3) == want
    assert (want - done) * pace <= left or want == done + 3  # never more steps than fit


def _stamps(durations):
    out, t = [0.0], 0.0
    for d in durations:
        t += d
        out.append(t)
    return out


def test_the_pace_is_one_that_a_slow_moment_does_not_move():
    assert robust_pace(_stamps([0.1] * 100)) == pytest.approx(0.1)
    # one slow step (a page-cache miss) inside the window
    moment = [0.1] * 150 + [3.0] + [0.1] * 120
    assert robust_pace(_stamps(moment)) == pytest.approx(0.1)
    # steadily uneven steps (threads descheduled by other work): the time is their sum, so the
    # pace is their mean (0.46), not the typical step (the median, 0.1)
    uneven = [0.1, 0.1, 1.0, 0.1, 1.0] * 60
    assert 0.44 <= robust_pace(_stamps(uneven)) <= 0.46
    # a slow start (30 s at 1.5 s per step), then the machine's own pace: only the later half of
    # the time counts
    slow_start = [1.5 * i for i in range(1, 21)]
    slow_start += [slow_start[-1] + 0.1 * i for i in range(1, 301)]
    assert robust_pace(slow_start) == pytest.approx(0.1)
    # a steady slow machine is slow
    assert robust_pace([0.3 * i for i in range(40)]) == pytest.approx(0.3)


# ------------------------------------------------------------------------------------ threads
def test_trial_steps_cycle_thread_counts_by_step_number():
    got = [threads_for_step(s, 5, [2, 1], None) for s in range(7)]
    assert got == [2, 1, 2, 1, 2, None, None]  # after the trial: torch's own
    assert threads_for_step(40, None, [2, 1], 1) == 2  # trial_steps None: still trying
    assert threads_for_step(41, None, [2, 1], 1) == 1
    assert threads_for_step(5, 5, [2, 1], 1) == 1  # the first step after the trial: threads
    assert [threads_for_step(s, 3, None, 1) for s in (0, 5)] == [1, 1]  # no trial: threads


def test_a_thread_plan_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        plan = ThreadPlan(trial_steps=4, trial_threads=[2, 1], threads=None)
        assert not plan.trying
        seen = []
        for step in (0, 1, 2, 4):
            plan.set(step)
            seen.append(torch.get_num_threads())
        assert seen == [2, 1, 2, 1]  # step 4: after the trial, torch's own count (1 here)
        assert ThreadPlan(None, [2, 1], None).trying and not ThreadPlan(None, [2, 2], None).trying
    finally:
        torch.set_num_threads(before)


def _cycled(pace_of, n_steps):
    """Stamps and step numbers of n_steps steps cycling [2, 1] threads, step s taking
    pace_of(threads, time, how many steps of that count came before)."""
    stamps, steps, t, k = [0.0], [-1], 0.0, {1: 0, 2: 0}
    for s in range(n_steps):
        n = _count(s)
        t += pace_of(n, t, k[n])
        k[n] += 1
        stamps.append(t)
        steps.append(s)
    return stamps, steps


def _count(s):
    return threads_for_step(s, None, [2, 1], None)


def test_one_thread_is_chosen_where_two_are_uneven_under_load():
    # two threads beside two busy processes: a fast step most of the time, a very slow one now
    # and then (mean 0.45 s, median 0.25); one thread a steady 0.20 s
    def pace(n, t, k):
        return (1.25 if k % 5 == 3 else 0.25) if n == 2 else 0.20
    chosen, paces = choose_threads(*_cycled(pace, 200), _count)
    assert chosen == 1 and paces[1] == pytest.approx(0.20) and paces[2] > 0.40


def test_two_threads_are_chosen_on_an_idle_machine():
    chosen, paces = choose_threads(*_cycled(lambda n, t, k: 0.1 if n == 2 else 0.135, 300),
                                   _count)
    assert chosen == 2 and list(paces) == [2, 1]
    assert paces == {2: pytest.approx(0.1), 1: pytest.approx(0.135)}


def test_a_burst_that_has_ended_does_not_choose():
    # other work on both cores for the first 30 s (one thread faster then), idle after; the
    # choice at 38 s reads the latest steps, as the rest of the run will go
    def pace(n, t, k):
        if t < 30:
            return 0.6 if n == 2 else 0.2
        return 0.1 if n == 2 else 0.135
    stamps, steps = _cycled(pace, 400)
    cut = next(i for i, t in enumerate(stamps) if t >= 38)
    assert choose_threads(stamps[:cut], steps[:cut], _count)[0] == 2


def test_so_slow_a_machine_that_few_steps_compare_still_chooses_the_faster():
    # two threads take 10 s a step under heavy load, one thread 0.3 s: two steps of each
    chosen, paces = choose_threads(*_cycled(lambda n, t, k: 10.0 if n == 2 else 0.3, 4), _count)
    assert chosen == 1 and paces == {2: pytest.approx(10.0), 1: pytest.approx(0.3)}


# ---------------------------------------------------------------------------------- held schedule
def _lrs(scheduler_factory, steps):
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, betas=(0.9, 0.99))
    s = scheduler_factory(opt)
    out = []
    for _ in range(steps):
        out.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0]))
        opt.step()
        s.step()
    return out, opt, s


def _onecycle(opt, n):  # as the module builds it: a warm-up of at least 2 steps
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=n,
                                               pct_start=max(0.25, 2.0 / n))


@pytest.mark.parametrize("hold,total", [(0, 40), (7, 40), (37, 40)])
def test_a_held_schedule_holds_then_runs_the_schedule_over_the_rest(hold, total):
    plain, _, _ = _lrs(lambda o: _onecycle(o, total - hold), total - hold)
    held, _, _ = _lrs(lambda o: HeldSchedule(o, lambda n: _onecycle(o, n), hold=hold, total=total),
                      total)
    start = (3e-3 / 25, 0.95)  # OneCycleLR's starting lr (max_lr / div_factor) and beta1
    assert all(v == pytest.approx(start) for v in held[:hold])
    assert held[hold:] == plain  # then exactly the schedule of the remaining length


def test_committing_late_equals_knowing_the_length_up_front():
    """A budget's run commits after K held steps; a run given K and N from the start sets the
    same lr and beta1 at every step."""
    known, _, _ = _lrs(lambda o: HeldSchedule(o, lambda n: _onecycle(o, n), hold=9, total=30), 30)

    def late(opt):
        s = HeldSchedule(opt, lambda n: _onecycle(opt, n))
        orig = s.step

        def step():
            orig()
            if s.k == 9:
                s.commit(30)
        s.step = step
        return s
    assert _lrs(late, 30)[0] == known


def test_a_held_schedule_resumes_from_its_state_dict():
    whole, _, _ = _lrs(lambda o: HeldSchedule(o, lambda n: _onecycle(o, n), hold=5, total=30), 30)
    for cut in (3, 5, 6, 17):  # inside the hold, at its end, inside the schedule
        first, opt, s = _lrs(lambda o: HeldSchedule(o, lambda n: _onecycle(o, n), hold=5,
                                                    total=30), cut)
        net2 = torch.nn.Linear(2, 2)
        opt2 = torch.optim.Adam(net2.parameters(), lr=3e-3, betas=(0.9, 0.99))
        s2 = HeldSchedule(opt2, lambda n, o=opt2: _onecycle(o, n))  # as a resumed run builds it
        opt2.load_state_dict(opt.state_dict())  # Lightning: optimizers, then schedulers
        s2.load_state_dict(s.state_dict())
        rest = []
        for _ in range(30 - cut):
            rest.append((opt2.param_groups[0]["lr"], opt2.param_groups[0]["betas"][0]))
            opt2.step()
            s2.step()
        assert first + rest == whole, cut


# ------------------------------------------------------------------------------------- end to end
BUDGET = 20.0  # seconds: a plan after PLAN_AT of it, then up to two epochs


@pytest.fixture(scope="module")
def budgeted_run(tmp_path_factory):
    """A run with a budget of some tens of steps (its pace from its own first steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("budget") / "run"
        # its first steps try two threads and one (as a budgeted run on a 2-core CPU does)
        s = train(_cfg(f"train.time_budget_s={BUDGET}", "train.trial_threads=[2,1]"), run)
    finally:
        torch.set_num_threads(threads)
    return run, s


@pytest.mark.slow  # about 25 s on 2 cores: with make test-slow
def test_a_budgeted_run_trains_the_steps_it_planned(budgeted_run):
    run, s = budgeted_run
    tb = s["time_budget"]
    assert tb["source"] == "run" and tb["budget_s"] == BUDGET and tb["pace_s_per_step"] > 0
    steps, hold = tb["steps"], tb["hold_steps"]
    assert 3 <= hold + 3 <= steps <= 124  # the two epochs' cap: 62 steps each
    assert s["global_step"] == steps
    summary = json.loads((run / "summary.json").read_text())
    assert summary["time_budget"]["steps"] == steps
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["trainer"]["max_steps"] == steps and cfg["optim"]["hold_steps"] == hold
    assert cfg["train"]["time_budget_s"] == BUDGET
    # the thread count it kept is the one its held steps went faster with, and is recorded
    assert tb["threads"] in (1, 2) and cfg["train"]["threads"] == tb["threads"]
    assert cfg["train"]["trial_threads"] == [2, 1]
    assert cfg["train"]["trial_steps"] == tb["trial_steps"] <= hold  # tried, then chose, held
    paces = {int(k): v for k, v in tb["pace_by_threads"].items()}
    assert tb["threads"] == min(paces, key=paces.get)
    assert (run / "samples" / "final.png").is_file()  # the step count's end is the run's end
    # the planned steps fill the budget at the planned pace (or the cap ends the run)
    assert steps == 124 or (steps - hold) * tb["pace_s_per_step"] <= BUDGET


@pytest.mark.slow  # about 20 s more: with make test-slow
def test_the_recorded_plan_trains_the_same_weights(budgeted_run, tmp_path):
    """The planner draws no random numbers, the held schedule sets the same values as one given
    its length, and the thread counts follow the step numbers: trainer.max_steps=N
    optim.hold_steps=K train.threads=T train.trial_threads=[2,1] train.trial_steps=S from the
    start is bitwise the budgeted run."""
    run, s = budgeted_run
    steps, hold = s["time_budget"]["steps"], s["time_budget"]["hold_steps"]
    threads, trial = s["time_budget"]["threads"], s["time_budget"]["trial_steps"]
    train(_cfg(f"+trainer.max_steps={steps}", f"optim.hold_steps={hold}",
               f"train.threads={threads}", "train.trial_threads=[2,1]",
               f"train.trial_steps={trial}"), tmp_path / "fixed")
    a = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "fixed" / "checkpoints" / "last.ckpt", map_location="cpu",
                   weights_only=False)
    assert a["global_step"] == b["global_step"] == steps
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


def test_given_max_steps_wins_over_the_budget(tmp_path):
    assert budget_planner(_cfg("train.time_budget_s=4", "+trainer.max_steps=7"), None,
                          tmp_path) is None
    assert budget_planner(_cfg(), None, tmp_path) is None
    assert budget_planner(_cfg("train.time_budget_s=4", "+trainer.fast_dev_run=true"), None,
                          tmp_path) is None


def test_a_hold_that_leaves_the_schedule_no_steps_is_refused():
    with pytest.raises(ConfigError) as e:
        _cfg("+trainer.max_steps=20", "optim.hold_steps=19")
    assert str(e.value).startswith("optim.hold_steps=19 leaves 1 of the run's 20")
    assert _cfg("+trainer.max_steps=20", "optim.hold_steps=17")["optim"]["hold_steps"] == 17


@pytest.mark.parametrize("override,needle", [
    ("train.time_budget_s=-1", "train.time_budget_s must be a number of seconds > 0"),
    ("train.time_budget_s=0", "train.time_budget_s must be a number of seconds > 0"),
    ("train.time_budget_s=abc", "train.time_budget_s"),
    ("trainer.devices=2", "applies to one-process diffusion training"),
    ("task=noise_level", "applies to one-process diffusion training"),
])
def test_bad_budgets_name_the_setting(override, needle):
    extra = [override] if override.startswith("train.time") else [override,
                                                                    "train.time_budget_s=60"]
    with pytest.raises(ConfigError) as e:
        _cfg(*extra)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("extra,needle", [
    (["train.threads=0"], "train.threads must be a thread count >= 1"),
    (["train.trial_threads=[]"], "train.trial_threads must be a list of thread counts >= 1"),
    (["train.trial_threads=[2,0]"], "train.trial_threads must be a list"),
    (["train.trial_steps=-1", "train.trial_threads=[2,1]"], "train.trial_steps must be a step"),
    (["train.trial_steps=5"], "train.trial_steps=5 counts the steps that try "
                              "train.trial_threads, which is not given"),
    (["train.trial_threads=[2,1]"], "train.trial_threads=[2, 1] needs train.trial_steps (how "
                                    "many steps try them)"),
])
def test_bad_thread_settings_name_the_setting(extra, needle):
    with pytest.raises(ConfigError) as e:
        _cfg(*extra)
    assert needle in str(e.value) and "\n" not in str(e.value)
    c = _cfg("train.trial_threads=[2,1]", "train.trial_steps=6")
    assert c["train"]["trial_threads"] == [2, 1] and c["train"]["trial_steps"] == 6


# ------------------------------------------------------------------------------ bf16-if-native
@pytest.mark.parametrize("native,accelerator,want", [
    (True, "cpu", "bf16-mixed"), (False, "cpu", "32-true"),
    (False, "gpu", "bf16-mixed"), (True, "gpu", "bf16-mixed")])
def test_bf16_if_native(monkeypatch, native, accelerator, want):
    monkeypatch.setattr(train_mod, "cpu_has_native_bf16", lambda: native)
    assert train_mod._precision({"precision": "bf16-if-native"}, accelerator) == want
    assert train_mod._precision({"precision": "auto"}, "cpu") == "32-true"  # unchanged
    assert _cfg("trainer.precision=bf16-if-native")["trainer"]["precision"] == "bf16-if-native"
