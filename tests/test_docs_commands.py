"""Every documented command is a test.

The commands are read from the documents themselves (README.md and the command blocks of
docs/*.md, the header comments of conf/**/*.yaml; see tests/doc_commands.py), so a command added
to a document is tested without anyone adding a test. Each distinct command is one test, named by
the command:

- RUN: executed as written (a subprocess of ``python train.py``, ``python eval.py``,
  ``diffexp-report``, or ``make`` in a folder holding the Makefile), with overrides that shrink it
  to a tiny size appended after the document's own arguments, so every key the document writes
  still goes through the entry point's checks (a misspelled key fails the test);
- COMPOSE: what CI lacks (SLURM, CUDA, several GPUs, the network, an hour) or what would recurse
  (``make test``): the config is composed (``--cfg all``) and validated, or the make target's
  recipe printed (``make -n``). The list, with the reasons, is printed at the end of the session.

Placeholders (``PATH``, ``RUN``, ``PRED.ckpt``, ``NO_T.ckpt``, ``DATE``, ``DATE_NAME``, ``...``)
are filled with tiny models and sweep folders made first by the same entry points; ``<date>_NAME``
folders and ``$VARIABLE`` paths are the outputs of the commands before them in the same block,
which are run first (in one folder per block, as a user would type them). A command written in
several places runs once, in the folder of its first place. All sweeps share one model store, so
a sweep whose tiny models an earlier sweep trained reuses them, as the store promises.

The runs take several minutes in all, so RUN tests are marked slow (``make test-slow``); the
COMPOSE tests and the parser's own tests are in the default suite.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from .doc_commands import (
    COMPOSE,
    OTHER,
    REPO,
    RUN,
    DocCommand,
    all_commands,
    make_target,
    markdown_commands,
    plan,
)

# --- the tiny size ---------------------------------------------------------------------------------

#: appended to every run even where the document sets the key (unless it sweeps it): the size
FORCED_TRAIN = {
    "train.epochs": "1",
    "train.time_budget_s": "null",  # a budget trains for its seconds (test_time_budget.py)
    "data.subset": "1024",
    "data.val_size": "64",
    "trainer.limit_train_batches": "8",
    "trainer.limit_val_batches": "2",
    "eval.n_samples": "32",
    "study.predictor_epochs": "1",
    "study.n_eval": "32",
}
#: appended only where the document does not set the key (or, for model.*, any model key)
DEFAULT_TRAIN = {
    "logger": "csv",
    "train.batch_size": "32",
    "train.n_sample_images": "16",
    "eval.batch_size": "32",
    "noise_level.n_scatter": "32",
    "eval.diagnostics": "false",
}
TINY_MODEL = {"model.widths": "[16,32]", "model.blocks": "1", "model.attn_levels": "[1]",
              "model.head_dim": "16"}
FORCED_EVAL = {"eval.n_samples": "32"}
DEFAULT_EVAL = {"logger": "csv", "eval.batch_size": "32", "eval.n_grid": "16",
                "eval.diagnostics": "false"}  # the diagnostics' figures: tests/test_eval.py
#: where the document sets these, they are replaced by the tiny value
FORCED_IF_SET = {"trainer.max_steps": "++trainer.max_steps=4", "hydra.sweeper.n_trials":
                 "hydra.sweeper.n_trials=2", "hydra.launcher.n_jobs": "hydra.launcher.n_jobs=2"}
#: Optuna searches get two trials
SEARCH = "hydra.sweeper.n_trials=2"

_PARSER = OverridesParser.create()


def _override(arg: str):
    if arg.startswith("-"):
        return None
    try:
        return _PARSER.parse_overrides([arg])[0]
    except Exception:  # noqa: BLE001 - not an override: Hydra itself will say what is wrong
        return None


def shrink(program: str, argv: list[str], store: Path | None = None) -> list[str]:
    """The overrides appended after the document's ``argv`` to make the run tiny. Keys the
    document sweeps are left alone; keys it sets are overridden only where they set the size.
    ``store``: the model store every sweep shares (a model trained at the tiny size once is
    reused by the other sweeps that need it, as the store promises)."""
    keys, swept = set(), set()
    for a in argv:
        o = _override(a)
        if o is not None:
            keys.add(o.key_or_group)
            if o.is_sweep_override():
                swept.add(o.key_or_group)
    train = program in ("python train.py", "diffexp-train", "make")
    forced, default = (FORCED_TRAIN, DEFAULT_TRAIN) if train else (FORCED_EVAL, DEFAULT_EVAL)
    out = [f"{k}={v}" for k, v in forced.items() if k not in swept]
    out += [f"{k}={v}" for k, v in default.items() if k not in keys]
    if train and not any(k.startswith("model.") or k == "model" for k in keys - {"model"}):
        out += [f"{k}={v}" for k, v in TINY_MODEL.items()]
    out += [v for k, v in FORCED_IF_SET.items() if k in keys and k not in swept]
    if any(k == "hparams_search" for k in keys) and "hydra.sweeper.n_trials" not in keys:
        out.append(SEARCH)
    if train and store is not None and "train.model_store" not in keys:
        out.append(f"train.model_store={store}")
    return out


# --- placeholders ----------------------------------------------------------------------------------

#: value placeholders: (key, written) -> what the test puts there
VALUE_PLACEHOLDERS = {("experiment", "NAME"): "results_schedule"}
#: documented paths that scripts/results.sh makes (not a command of a document): a tiny model
EXTERNAL_CKPTS = {"runs/results/karras_samplers/checkpoints/last.ckpt"}
#: words in a path that stand for a folder or date the reader fills in
_WILD = re.compile(r"<date>|<name>|\bDATE_NAME\b|\bDATE\b|\bRUN\b|\bNAME\b|"
                   r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d")
PATH_KEYS = ("ckpt", "ckpt_path", "objective.noise_level_ckpt", "resume", "resume.run")
#: every word in a command that looks like a placeholder must be one of these
KNOWN_PLACEHOLDERS = {"PATH", "RUN", "DATE", "DATE_NAME", "NAME", "PRED.ckpt", "NO_T.ckpt", "...",
                      "<date>", "<name>"}


def placeholders_in(text: str) -> set[str]:
    words = set(re.findall(r"<[a-z_]+>|\.\.\.|(?<![$\w{])[A-Z][A-Z_]{2,}(?:\.ckpt)?\b", text))
    return words - {"ARGS"}


@dataclass
class Result:
    argv: list[str]
    cwd: Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def tail(self, n: int = 2500) -> str:
        cmd = shlex.join(self.argv)
        return (f"$ (cd {self.cwd} && {cmd})\nexit {self.returncode} after {self.seconds:.0f}s\n"
                f"--- stdout (tail)\n{self.stdout[-n:]}\n--- stderr (tail)\n{self.stderr[-n:]}")


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline",
               WANDB_SILENT="true", MPLBACKEND="Agg", HYDRA_FULL_ERROR="0")
    env.pop("VIRTUAL_ENV", None)
    env.pop("CONDA_PREFIX", None)
    return env


def _run(argv: list[str], cwd: Path, timeout: int = 1800) -> Result:
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    return Result(argv, cwd, p.returncode, p.stdout, p.stderr, time.perf_counter() - t0)


def _entry(program: str) -> list[str]:
    """The argv prefix of a documented program, run from this interpreter's environment."""
    if program.endswith("train.py") or program == "diffexp-train":
        return [sys.executable, str(REPO / "train.py")]
    if program.endswith("eval.py") or program == "diffexp-eval":
        return [sys.executable, str(REPO / "eval.py")]
    if program == "diffexp-report":
        return [sys.executable, "-c", "import sys; from diffexp.cli.report import main; "
                "sys.argv[0] = 'diffexp-report'; main()"]
    raise ValueError(program)


#: what `make clean` says it removes, made in its folder before it runs
CLEAN_LEFTOVERS = ("build", "dist", "src/diffexp.egg-info", ".pytest_cache", ".ruff_cache",
                   "pkg/__pycache__")


def _make_folder(ws: Path) -> list[str]:
    """A folder holding the Makefile and what its targets read, so `make TARGET` runs there as in
    a checkout; the install step is satisfied by a fresh stamp (the environment exists)."""
    for name in ("Makefile", "train.py", "eval.py", "pyproject.toml"):  # nothing `clean` removes
        if not (ws / name).exists():
            (ws / name).symlink_to(REPO / name)
    stamp = ws / ".installed-test"
    stamp.touch()
    return ["make", f"PY={sys.executable}", f"STAMP={stamp}"]


class Session:
    """Folders, the tiny fixtures and each block's commands, run once per test session."""

    def __init__(self, root: Path):
        self.root = root
        self.done: dict[str, Result] = {}
        self.fixtures: dict[str, Path] = {}
        self.first: dict[str, DocCommand] = {}
        for c in unique_commands():
            self.first.setdefault(run_key(c), c)
        self.store = root / "models"  # one model store for every sweep (reuse across commands)
        self.by_block: dict[str, list[DocCommand]] = {}
        for c in all_commands():
            self.by_block.setdefault(c.block, []).append(c)

    def canonical(self, c: DocCommand) -> DocCommand:
        """The first place a command with this text is written (or one that differs only in a
        size the tiny run replaces): where it runs, once."""
        return self.first[run_key(c)]

    def workspace(self, c: DocCommand) -> Path:
        block = self.canonical(c).block
        ws = self.root / re.sub(r"[^A-Za-z0-9_.-]", "_", block)
        ws.mkdir(parents=True, exist_ok=True)
        return ws

    # -- the tiny things placeholders stand for

    def _fixture(self, name: str, program: str, args: list[str], out: str) -> Path:
        if name not in self.fixtures:
            ws = self.root / "fixtures"
            ws.mkdir(exist_ok=True)
            full = [*_entry(program), *args, *shrink(program, args, self.store)]
            r = _run(full, ws)
            assert r.returncode == 0, f"fixture {name} failed\n{r.tail()}"
            self.fixtures[name] = ws / out
        return self.fixtures[name]

    def model_run(self) -> Path:
        return self._fixture("model", "python train.py",
                             ["experiment=quickstart", "train.eval_at_end=false",
                              "hydra.run.dir=model"], "model")

    def predictor(self) -> Path:
        return self._fixture("predictor", "python train.py",
                             ["task=noise_level", "hydra.run.dir=predictor"],
                             "predictor/checkpoints/last.ckpt")

    def no_t(self) -> Path:
        return self._fixture("no_t", "python train.py",
                             ["objective=no_t", f"objective.noise_level_ckpt={self.predictor()}",
                              "train.eval_at_end=false", "hydra.run.dir=no_t"],
                             "no_t/checkpoints/last.ckpt")

    def eval_sweep(self) -> Path:
        ckpt = self.model_run() / "checkpoints" / "last.ckpt"
        return self._fixture("eval_sweep", "python eval.py",
                             ["-m", f"ckpt={ckpt}", "sampler=euler,heun", "sampler.steps=3",
                              "hydra.sweep.dir=eval_sweep"], "eval_sweep")

    def train_sweep(self) -> Path:
        return self._fixture("train_sweep", "python train.py",
                             ["-m", "data.scale=0.5,1", "sampler=euler,heun", "sampler.steps=3",
                              "hydra.sweep.dir=train_sweep"], "train_sweep")

    # -- commands

    def predecessors(self, c: DocCommand) -> list[DocCommand]:
        return [p for p in self.by_block[c.block][:c.index] if plan(p).mode == RUN]

    def search_dirs(self, c: DocCommand) -> list[Path]:
        """Where the block's earlier commands wrote (each ran where it is first written)."""
        for p in self.predecessors(c):
            self.execute(p)
        dirs = [self.workspace(c)]
        for p in reversed(self.predecessors(c)):
            if self.workspace(p) not in dirs:
                dirs.append(self.workspace(p))
        return dirs

    def resolve_path(self, c: DocCommand, key: str, value: str, ws: Path) -> str:
        """A path the document writes: as it is where it exists (here or where the block's
        earlier commands wrote); a dated or named placeholder matched there; else the tiny
        fixture the placeholder stands for."""
        if (ws / value).exists():
            return value
        if value == "NO_T.ckpt":
            return str(self.no_t())
        if value == "PRED.ckpt":
            return str(self.predictor())
        if value in EXTERNAL_CKPTS:
            return str(self.model_run() / "checkpoints" / "last.ckpt")
        if value.endswith("eval_multirun/DATE"):
            return str(self.eval_sweep())
        if value.endswith("multirun/DATE_NAME"):
            return str(self.train_sweep())
        placeholder = value in ("PATH", "...")
        if not placeholder:
            pattern = _WILD.sub("*", value)
            if pattern.startswith("*/"):
                pattern = "runs/train/" + pattern
            for d in self.search_dirs(c):
                hits = sorted(glob.glob(str(d / pattern)))
                if hits:
                    return hits[-1] if d != ws else str(Path(hits[-1]).relative_to(ws))
            if not _WILD.search(value):
                return value  # nothing made it: the command says so itself
        if key == "objective.noise_level_ckpt":
            return str(self.predictor())
        if key in ("resume", "resume.run"):
            dst = ws / "runs" / "train" / f"resumed_{c.index}"
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(self.model_run(), dst)
            return str(dst.relative_to(ws))
        if key in ("ckpt", "ckpt_path"):
            return str(self.model_run() / "checkpoints" / "last.ckpt")
        return value

    def resolve(self, c: DocCommand, argv: list[str], ws: Path) -> list[str]:
        out = []
        for a in argv:
            if c.program == "diffexp-report":
                out.append(self.resolve_path(c, "dir", a, ws) if not a.startswith("-")
                           and "/" in a else a)
                continue
            o = _override(a)
            name = a.split("=", 1)[0]
            if o is None and "=" in a and name in PATH_KEYS:  # e.g. <date> in a path
                key, value = name, a.split("=", 1)[1]
            elif o is None or o.is_sweep_override():
                out.append(a)
                continue
            else:
                key, value = o.key_or_group, a.split("=", 1)[1]
            if (key, value) in VALUE_PLACEHOLDERS:
                out.append(f"{a.split('=', 1)[0]}={VALUE_PLACEHOLDERS[key, value]}")
            elif key in PATH_KEYS:
                out.append(f"{a.split('=', 1)[0]}={self.resolve_path(c, key, value, ws)}")
            else:
                out.append(a)
        return out

    def command_line(self, c: DocCommand, ws: Path) -> list[str]:
        """What the test runs for ``c`` (RUN) or composes (COMPOSE)."""
        p = plan(c)
        argv = c.argv()
        if c.program == "make":
            base = _make_folder(ws)
            if p.mode == COMPOSE:
                return [*base, "-n", *argv]
            doc_args = next((a.split("=", 1)[1] for a in argv if a.startswith("ARGS=")), "")
            words = shlex.split(doc_args)
            tiny = shlex.join([*words, *shrink("make", words, self.store)]) if make_target(c) == "run" \
                else doc_args
            return [*base, *[a for a in argv if not a.startswith("ARGS=")], f"ARGS={tiny}"]
        argv = self.resolve(c, argv, ws)
        if p.mode == COMPOSE:
            job = []
            for a in argv:
                o = _override(a)
                if a == "-m":
                    continue
                if o is not None and o.is_sweep_override():  # the sweep's first job
                    a = f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"
                job.append(a)
            return [*_entry(c.program), *job, "--cfg", "all"]
        if c.program == "diffexp-report" or "--help" in argv:
            return [*_entry(c.program), *argv]
        return [*_entry(c.program), *argv, *shrink(c.program, argv, self.store)]

    def execute(self, c: DocCommand) -> Result:
        c = self.canonical(c)
        key = run_key(c)
        if key not in self.done:
            ws = self.workspace(c)
            argv = self.command_line(c, ws)
            if c.program == "make" and make_target(c) == "clean":
                for leftover in CLEAN_LEFTOVERS:
                    (ws / leftover).mkdir(parents=True, exist_ok=True)
            self.done[key] = _run(argv, ws)
        return self.done[key]


def run_key(c: DocCommand) -> str:
    """The command without the sizes the tiny run replaces anyway (``eval.n_samples=256`` and
    ``eval.n_samples=512`` run the same tiny run)."""
    forced = {*FORCED_TRAIN, *FORCED_EVAL, *FORCED_IF_SET}
    words = []
    for a in c.argv():
        o = _override(a)
        if o is not None and o.key_or_group in forced and not o.is_sweep_override():
            continue
        words.append(a)
    return shlex.join([c.program, *words])


def unique_commands() -> list[DocCommand]:
    """One entry per distinct command text (its first place in the documents)."""
    seen: dict[str, DocCommand] = {}
    for c in all_commands():
        seen.setdefault(c.text, c)
    return list(seen.values())


def places(text: str) -> list[str]:
    return [c.where for c in all_commands() if c.text == text]


COMMANDS = unique_commands()


def _param(c: DocCommand):
    marks = [pytest.mark.slow] if plan(c).mode == RUN else []
    return pytest.param(c, id=c.text if len(c.text) <= 120 else c.text[:117] + "...", marks=marks)


@pytest.fixture(scope="session")
def session(tmp_path_factory) -> Session:
    return Session(tmp_path_factory.mktemp("doc_commands"))


class _Summary:
    """Prints the run and composed-only lists at the end of a session that ran these tests."""

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.write_sep("-", "documented commands")
        terminalreporter.write_line(command_table())


@pytest.fixture(scope="module", autouse=True)
def _print_lists(request):
    summary = _Summary()
    request.config.pluginmanager.register(summary, "doc-commands-summary")
    yield


def command_table() -> str:
    lines = []
    for mode, title in ((RUN, "RUN at a tiny size"), (COMPOSE, "COMPOSED ONLY (not run)")):
        lines.append(f"{title}:")
        for c in COMMANDS:
            p = plan(c)
            if p.mode == mode:
                lines.append(f"  {c.text}" + (f"\n      why: {p.reason}" if p.reason else "")
                             + f"\n      in: {', '.join(places(c.text))}")
    lines.append("NOT COVERED (scripts with tests of their own):")
    all_commands()
    lines += [f"  {t}   ({w})" for w, t in OTHER]
    return "\n".join(lines)


# --- the tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", [_param(c) for c in COMMANDS])
def test_documented_command(cmd: DocCommand, session: Session, data_root):
    """The command, as the documents write it, exits 0 (RUN at a tiny size, or COMPOSE)."""
    r = session.execute(cmd)
    where = ", ".join(places(cmd.text))
    assert r.returncode == 0, f"documented in {where}: {cmd.text}\n{r.tail()}"
    if plan(cmd).mode == COMPOSE and cmd.program != "make":
        from omegaconf import OmegaConf

        from diffexp.config import validate_train_config

        cfg = OmegaConf.create(r.stdout)
        cfg.pop("hydra")
        if cmd.program in ("python train.py", "srun python train.py", "diffexp-train"):
            validate_train_config(cfg)
    for m in re.finditer(r"^Samples: (\S+)$", r.stdout, flags=re.M):  # make run's last line
        assert (r.cwd / m.group(1)).is_file(), m.group(0)
    study = [a.split("=", 1)[1] for a in cmd.argv() if a.startswith("experiment=")
             and "task: no_t_study" in _recipe(a.split("=", 1)[1])]
    if study and plan(cmd).mode == RUN and "-m" not in cmd.argv():  # the study's own promise
        assert glob.glob(str(r.cwd / "runs" / "train" / f"*_{study[0]}" / "comparison.md")), \
            f"no comparison.md\n{r.tail()}"
    if cmd.program == "make" and make_target(cmd) == "clean":
        assert not [p for p in CLEAN_LEFTOVERS if (r.cwd / p).exists()], r.tail()


def _recipe(name: str) -> str:
    path = REPO / "conf" / "experiment" / f"{name}.yaml"
    return path.read_text() if path.is_file() else ""


def test_documents_have_the_commands_they_show():
    """The parser finds the README's command blocks, every recipe's header command and the
    variables of a block; every placeholder a command uses is one the test fills."""
    texts = {c.text for c in COMMANDS}
    assert {"make run", "make test", "python train.py experiment=cpu_no_t",
            "python eval.py ckpt=NO_T.ckpt objective.use_predicted_noise_level=false",
            "diffexp-report runs/eval_multirun/DATE --baseline sampler=euler",
            "python train.py -m experiment=results_schedule"} <= texts
    readme = [c for c in COMMANDS if c.where.startswith("README.md")]
    assert len(readme) >= 35
    for path in sorted((REPO / "conf" / "experiment").glob("*.yaml")):
        header = [line for line in path.read_text().splitlines() if line.startswith("#")]
        written = sum(1 for line in header if re.match(r"#\s+(python|diffexp-)", line))
        assert len([c for c in all_commands() if c.where.startswith(
            str(path.relative_to(REPO)) + ":")]) == written, path.name
    lesson = next(c for c in COMMANDS if c.text.startswith("python train.py experiment=lesson_cosine"))
    assert "model=unet_tiny" in lesson.argv() and "hydra.run.dir=runs/lesson/cosine" in lesson.argv()
    for c in COMMANDS:
        unknown = placeholders_in(" ".join(c.argv())) - KNOWN_PLACEHOLDERS
        assert not unknown, f"{c.where}: {c.text}: placeholder(s) {unknown} the test cannot fill"


def test_shrink_overrides_follow_the_documents_own():
    """The tiny size is appended: the document's words come first and unchanged, a swept size key
    stays swept, a key the document sets that is not a size is not overridden."""
    doc = ["-m", "experiment=tune_quickstart", "train.batch_size=32,64", "data.pad=0,2",
           "logger=none", "train.epochs=20"]
    tiny = shrink("python train.py", doc)
    assert "train.epochs=1" in tiny and not any(a.startswith("train.batch_size") for a in tiny)
    assert not any(a.startswith("logger=") for a in tiny) and "model.blocks=1" in tiny
    doc = ["-m", "seed=0,1,2", "train.epochs=3,6"]
    assert not any(a.startswith("train.epochs") for a in shrink("python train.py", doc))


MISSPELT = [
    ("python train.py schedule=cosine objectve=karras", "objectve"),
    ("python train.py schedule=sigmoid schedule.tua=0.7 objective=v", "schedule.tua"),
    ("python train.py +trainer.max_step=2000 trainer.precision=bf16", "trainer.max_step"),
    ("python eval.py ckpt=PATH sampler=euler sampler.stepz=20", "sampler.stepz"),
]


@pytest.mark.parametrize(("line", "key"), MISSPELT, ids=[k for _, k in MISSPELT])
def test_a_misspelt_key_in_a_document_fails_its_test(line, key, session, tmp_path, monkeypatch):
    """A doctored README line, read by the same parser and run by the same machinery with the same
    tiny overrides appended, fails and names the key."""
    doc = tmp_path / "README.md"
    doc.write_text(f"# x\n\n## Examples\n\n    {line}   # a comment\n\nprose\n")
    monkeypatch.setattr("tests.doc_commands.REPO", tmp_path)
    (c,) = markdown_commands(doc)
    monkeypatch.undo()
    assert c.text == line and plan(c).mode == RUN
    if "PATH" in line:  # needs a model; the session's tiny one
        session.model_run()
    ws = tmp_path / "ws"
    ws.mkdir()
    r = _run(session.command_line(c, ws), ws, timeout=300)
    assert r.returncode != 0, r.tail()
    assert key in r.stderr, r.tail()


if __name__ == "__main__":
    print(command_table())
