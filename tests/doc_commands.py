"""The commands the documents show, read from the documents themselves.

``python -m tests.doc_commands`` prints every command found, where it is written, and whether the
test suite runs it (at a tiny size) or only composes its config, with the reason.

Sources:

- ``README.md``: its command blocks (indented or fenced, not ``python`` code) and the inline code
  spans that are a command with arguments (``make run ARGS=...``, ``make lint``, ...);
- ``docs/*.md``: their command blocks;
- ``conf/**/*.yaml``: the commands in each file's header comment (``#   python train.py ...``).

A command is a line that starts with ``python train.py``, ``python eval.py``, ``diffexp-train``,
``diffexp-eval``, ``diffexp-report``, ``make`` or ``srun python train.py`` (a trailing ``\\``
continues it on the next line). ``NAME=value`` lines of a block are shell variables of the
commands after them (``$NAME``). Other lines that run something (``python scripts/...``,
``scripts/...``, ``python -c``) are collected as :data:`OTHER` commands: their scripts have
tests of their own.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .helpers import REPO

#: the programs whose documented commands are tested (the first words of the command)
PROGRAMS = ("python train.py", "python eval.py", "diffexp-train", "diffexp-eval", "diffexp-report",
            "make", "srun python train.py")
_OTHER_START = re.compile(r"^(python3? |scripts/|\./scripts/|bash scripts/)")
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class DocCommand:
    """One documented command: ``text`` as written (continuation lines joined, the trailing
    comment removed), where it is written, and the shell variables its block set before it."""

    text: str
    where: str  # "README.md:123"
    block: str  # "README.md:120": the block it belongs to (its commands share a folder)
    index: int  # its position among the block's commands
    variables: tuple = field(default=(), compare=False)  # ((NAME, value), ...)

    @property
    def program(self) -> str:
        for p in sorted(PROGRAMS, key=len, reverse=True):
            if self.text == p or self.text.startswith(p + " "):
                return p
        raise ValueError(self.text)

    def argv(self) -> list[str]:
        """The command's words after the program, as a shell would split them, with the block's
        variables substituted (``$NAME`` and ``${NAME}``)."""
        text = self.text
        for name, value in self.variables:
            text = re.sub(r"\$\{?" + name + r"\b\}?", lambda _m, v=value: v, text)
        words = shlex.split(text, comments=True)
        n = len(self.program.split())
        return words[n:]


def _is_command(line: str) -> bool:
    return any(line == p or line.startswith(p + " ") for p in PROGRAMS)


def _strip_comment(line: str) -> str:
    """The command without its trailing ``# comment`` (shell rules: a ``#`` that starts a word
    outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join lines ending in a backslash with the next; strip each; keep the first line number."""
    out: list[tuple[int, str]] = []
    buf, start = "", None
    for no, raw in lines:
        s = raw.strip()
        if start is None:
            start = no
        if s.endswith("\\"):
            buf += s[:-1].rstrip() + " "
            continue
        out.append((start, (buf + s).strip()))
        buf, start = "", None
    if buf:
        out.append((start, buf.strip()))
    return out


#: (where, text) of lines in command blocks that run something other than the tested programs
OTHER: list[tuple[str, str]] = []


def _commands_in_block(lines: list[tuple[int, str]], rel: str, block: str,
                       yaml_header: bool = False) -> list[DocCommand]:
    cmds: list[DocCommand] = []
    variables: list[tuple[str, str]] = []
    for no, line in _logical_lines(lines):
        if not line or line.startswith("#"):
            continue
        if line.startswith("$ "):
            line = line[2:]
        if yaml_header:
            # a header comment's remark after a command: two spaces and a parenthesis
            line = re.split(r"\s{2,}\(", line, maxsplit=1)[0]
        line = _strip_comment(line)
        if _is_command(line):
            cmds.append(DocCommand(line, f"{rel}:{no}", block, len(cmds), tuple(variables)))
            continue
        if _ASSIGN.match(line):
            words = shlex.split(line, comments=True)
            assigned = [w for w in words if _ASSIGN.match(w)]
            if len(assigned) == len(words):  # NAME=value ... on its own: shell variables
                variables.extend(tuple(w.split("=", 1)) for w in assigned)
                continue
            line = " ".join(words[len(assigned):]) if words[len(assigned):] else line
        if line.startswith("export ") or line.startswith("#!"):
            continue
        if _OTHER_START.match(line) or _is_command(line):
            OTHER.append((f"{rel}:{no}", line))
    return cmds


def markdown_commands(path: Path, inline: bool = False) -> list[DocCommand]:
    """The commands in a Markdown file's command blocks: indented blocks (four spaces after a
    blank line) and fenced blocks other than ``python``/``yaml``; with ``inline``, also code spans
    that hold a command with arguments."""
    rel = str(path.relative_to(REPO))
    lines = path.read_text().splitlines()
    cmds: list[DocCommand] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^\s*```(\w*)", line)
        if fence:
            lang = fence.group(1)
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            if lang not in ("python", "yaml", "json", "text"):
                body = [(k + 1, lines[k]) for k in range(i + 1, j)]
                cmds += _commands_in_block(body, rel, f"{rel}:{i + 1}")
            i = j + 1
            continue
        if line.startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            body = [(k + 1, lines[k][4:]) for k in range(i, j)]
            cmds += _commands_in_block(body, rel, f"{rel}:{i + 1}")
            i = j
            continue
        if inline:
            for span in re.findall(r"`([^`]+)`", line):
                span = span.strip()
                if _is_command(span) and (span.startswith("make") or " " in span):
                    if not any(c.text == span for c in cmds):
                        cmds.append(DocCommand(span, f"{rel}:{i + 1}", f"{rel}:{i + 1}", 0))
        i += 1
    return cmds


def yaml_header_commands(path: Path) -> list[DocCommand]:
    """The commands in a YAML file's header comment (the ``#`` lines before its first key)."""
    rel = str(path.relative_to(REPO))
    header: list[tuple[int, str]] = []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.startswith("#"):
            break
        header.append((no, line[1:]))
    return _commands_in_block(header, rel, f"{rel}:1", yaml_header=True)


def sources() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
            *sorted((REPO / "conf").rglob("*.yaml"))]


def all_commands() -> list[DocCommand]:
    """Every documented command, in document order (README, docs, conf)."""
    OTHER.clear()
    cmds: list[DocCommand] = []
    for path in sources():
        if path.suffix == ".md":
            cmds += markdown_commands(path, inline=path.name == "README.md")
        else:
            cmds += yaml_header_commands(path)
    return cmds


if __name__ == "__main__":
    for c in all_commands():
        print(f"{c.where:40s} {c.text}")
    print("\nother commands (scripts with their own tests):")
    for where, text in OTHER:
        print(f"{where:40s} {text}")


# --- what the suite does with each command -------------------------------------------------------

RUN, COMPOSE = "run", "compose"


@dataclass(frozen=True)
class Plan:
    mode: str  # RUN (at a tiny size) or COMPOSE (config printed with --cfg, or make -n)
    reason: str = ""


#: make targets that are not run, with why; the test checks the target and its recipe (make -n)
MAKE_NOT_RUN = {
    "test": "runs the test suite, this test among it",
    "test-unit": "runs the unit tests, which the suite runs too",
    "test-slow": "runs the slow test suite, this test among it",
    "test-all": "runs the whole test suite, this test among it",
    "lint": "ruff's verdict depends on the installed ruff (unpinned); the target and recipe are "
            "checked",
    "bench": "minutes of timing on an idle machine; tests/test_bench.py runs bench.py --quick",
    "results": "about an hour on 2 cores (docs/RESULTS.md); each recipe is run here at a tiny size",
    "gpu-check": "needs CUDA; --dry-run is tests/test_gpu_cpu_side.py::test_dry_run_end_to_end",
    "gpu-prep": "needs the network (downloads wheels)",
    "install": "needs the network (pip install)",
}


def make_target(c: DocCommand) -> str:
    words = [w for w in c.argv() if "=" not in w and not w.startswith("-")]
    return words[0] if words else "help"


def plan(c: DocCommand) -> Plan:
    """RUN at a tiny size, or COMPOSE only, with the reason: what CI lacks (SLURM, CUDA, several
    GPUs, network, hours) or what would recurse (the test suite itself)."""
    if c.program == "make":
        t = make_target(c)
        if t in MAKE_NOT_RUN:
            return Plan(COMPOSE, MAKE_NOT_RUN[t])
        return Plan(RUN)
    argv = c.argv()
    if c.program.startswith("srun"):
        return Plan(COMPOSE, "SLURM (srun inside an sbatch script)")
    if "hydra/launcher=slurm" in argv:
        return Plan(COMPOSE, "SLURM (the submitit launcher submits jobs to a cluster)")
    if "trainer=ddp" in argv and "trainer.accelerator=cpu" not in argv:
        return Plan(COMPOSE, "several GPUs (trainer=ddp on all visible GPUs; its CPU form "
                             "trainer.accelerator=cpu trainer.devices=2 is run)")
    return Plan(RUN)
