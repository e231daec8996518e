"""The package's shape: imports flow one way, the command line is Hydra glue over the runs layer,
every default is written once (in conf/), and every option of every group builds without data
files or Lightning's Trainer."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from diffexp import config as config_mod
from diffexp import sampling
from diffexp.config import CONF_DIR, ConfigError, group_options, validate_train_config

from .helpers import compose_train

PKG = Path(config_mod.__file__).resolve().parent


# ----------------------------------------------------------------------------- import graph
def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules ``name`` imports anywhere in its source (module level and inside
    functions: a lazy import is still a dependency)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "diffexp")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "diffexp":
                continue
            subs = {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known}
            out.update(subs)
            if len(subs) < len(node.names):  # names from the module itself, not submodules
                out.add(mod)
    return {m for m in out if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports. The root package is a leaf: its only import
    is the Python API, made on first attribute access (checked below), so that the version and
    ``import diffexp`` cost nothing."""
    mods = _modules()
    graph = {name: _imports(name, path, set(mods)) for name, path in mods.items()}
    graph["diffexp"] = set()
    return graph


def test_the_root_package_imports_the_api_only_on_first_use():
    tree = ast.parse((PKG / "__init__.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert top_level == []
    lazy = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert sorted((n.level, [a.name for a in n.names]) for n in lazy) == \
        [(1, ["__version__"]), (1, ["api"])]  # the version from its own module, the API


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_import_graph_finds_a_planted_cycle():
    # the checker itself: a two-module circle and a three-module circle are found
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_package_has_no_import_cycles():
    graph = _graph()
    assert "diffexp.runs.train" in graph and "diffexp.config" in graph["diffexp.runs.train"]
    assert _cycles(graph) == []


def test_cli_imports_only_the_runs_layer_and_config():
    graph = _graph()
    allowed = ("diffexp.runs", "diffexp.config", "diffexp.errors", "diffexp.say", "diffexp.files",
               "diffexp.cli")
    for name, deps in graph.items():
        if not name.startswith("diffexp.cli"):
            continue
        bad = sorted(d for d in deps if not d.startswith(allowed) and d != "diffexp")
        assert not bad, f"{name} imports {bad}"
        # no entry point imports another (train, eval and report each stand alone)
        entries = {"diffexp.cli.train", "diffexp.cli.eval", "diffexp.cli.report"}
        assert not (deps & entries - {name}), f"{name} imports {sorted(deps & entries)}"


def test_runs_and_core_do_not_import_the_cli():
    for name, deps in _graph().items():
        if not name.startswith("diffexp.cli"):
            assert not any(d.startswith("diffexp.cli") for d in deps), (name, deps)


def test_config_and_builders_do_not_import_lightning():
    code = ("import sys; import diffexp.config, diffexp.build; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('pytorch_lightning', 'lightning', 'lightning_fabric', 'hydra')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ----------------------------------------------------------------------------- defaults, once
def _schemas():
    return [obj for _, obj in inspect.getmembers(config_mod, dataclasses.is_dataclass)
            if inspect.isclass(obj) and obj.__module__ == config_mod.__name__]


def test_schemas_hold_no_defaults():
    schemas = _schemas()
    assert len(schemas) >= 15
    for schema in schemas:
        for f in dataclasses.fields(schema):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, \
                f"{schema.__name__}.{f.name} has a default: defaults live in conf/ only"


def test_a_key_missing_from_the_yaml_is_an_error_naming_it():
    from omegaconf import OmegaConf

    cfg = compose_train(["data=synthetic", "train.batch_size=16"])
    OmegaConf.set_struct(cfg, False)
    del cfg.data["pad"]
    with pytest.raises(ConfigError, match=r"^data\.pad: missing"):
        validate_train_config(cfg)


@pytest.mark.parametrize("name", sorted(n for n in group_options("sampler") if n != "ckpt"))
def test_each_sampler_yaml_sets_every_option_of_its_sampler(name):
    """The sampler functions' keyword defaults are the library's; a run takes every value from
    the yaml, which therefore lists every option (a function default never acts on a run)."""
    import yaml

    given = yaml.safe_load((CONF_DIR / "sampler" / f"{name}.yaml").read_text())
    base = given.pop("defaults", None)  # an option over another sampler yaml lists what differs
    keys = {"name", "steps", "clip_denoised", *sampling.sampler_options(given["name"])}
    assert set(given) <= keys
    if base is None:
        assert set(given) == keys


# ----------------------------------------------------------------------------- build everything
GROUPS = ["data", "model", "schedule", "objective", "sampler", "grid", "optim", "trainer",
          "callbacks", "logger", "experiment", "debug", "sweep"]


def _every_option():
    for group in GROUPS:
        for option in group_options(group):
            if option != "ckpt":
                yield group, option


class _MeasuredData:
    """Stands in for the training images where sigma_data is measured (no data files read)."""

    def measured_std(self) -> float:
        return 0.5


@pytest.mark.e2e  # every option of the whole config tree built: about 10 s on 2 cores
def test_every_option_of_every_group_composes_validates_and_builds(monkeypatch):
    import pytorch_lightning as pl

    from diffexp import build, data

    def refuse(*args, **kwargs):
        raise AssertionError("building a config touched the data files or the Trainer")

    monkeypatch.setattr(pl.Trainer, "__init__", refuse)
    monkeypatch.setattr(data, "load_fashion_mnist", refuse)
    monkeypatch.setattr(data, "build_data", refuse)
    built = 0
    for group, option in _every_option():
        overrides = [f"{group}={option}", "train.batch_size=16"]
        if (group, option) == ("sampler", "ddim_no_t_lesson"):
            overrides.append("objective=no_t")  # it samples no_t models only
        if (group, option) in (("objective", "no_t"), ("sampler", "ddim_no_t_lesson")) \
                or option in ("course_no_t", "lesson_no_t"):
            overrides.append("objective.use_predicted_noise_level=false")
        c = validate_train_config(compose_train(overrides))
        if c["task"] == "noise_level":
            spec = build.noise_level_spec(c)
        else:
            spec = build.diffusion_spec(c, data=_MeasuredData())
            assert spec.objective.name == c["objective"]["name"]
            assert spec.sampling.sampler["name"] == c["sampler"]["name"]
            if c["objective"]["name"] == "karras" and c["objective"]["sigma_data"] == "auto":
                assert spec.config["objective"]["sigma_data"] == 0.5
                assert spec.objective.sigma_data == pytest.approx(
                    0.5 * c["objective"]["sigma_data_factor"])
        net = spec.network()
        assert sum(p.numel() for p in net.parameters()) > 0
        with pytest.raises(TypeError, match="read-only"):
            spec.config["seed"] = 1
        built += 1
    assert built >= 40


def test_an_old_run_config_is_completed_with_todays_defaults(tmp_path, capsys):
    """resume=RUN_DIR of a run written before a setting existed: the setting takes the yaml's
    default (said on stdout); the run's own values stay."""
    import yaml

    from diffexp.runs.train import resume_config

    c = validate_train_config(compose_train(["data=synthetic", "train.batch_size=16",
                                             "logger=csv", "train.ema_decay=0.99"]))
    del c["train"]["skip_nonfinite"], c["model"]["compile"]
    c["logger"] = {"name": "csv", "project": "diffexp", "entity": None, "group": None,
                   "tags": [], "mode": "auto"}  # how csv runs were written before
    run = tmp_path / "old_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "config.yaml").write_text(yaml.safe_dump(c))
    new = resume_config(run)
    assert new["train"]["skip_nonfinite"] is False and new["model"]["compile"] is False
    assert new["train"]["ema_decay"] == 0.99 and new["logger"] == {"name": "csv", "extra": {}}
    assert "model.compile, train.skip_nonfinite did not exist" in capsys.readouterr().out
