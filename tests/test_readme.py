"""Every code block of README.md runs as written, at a small size, or is listed here with the reason it cannot.

How a block runs (each in a fresh working folder; a failing block fails its test):

- ```python blocks: as written, in this process, with the bundled data's preset
  (`DRCLConfig.preset("mfeat")`, `PRESETS["mfeat"]` in drcl_fast/config.py) shrunk to SMALL_PRESET.
  The blocks' lines are unchanged; only the preset they ask for is smaller.
- ```bash blocks: as written, by bash (`set -eu`), with `drcl-fast` on PATH a wrapper that runs
  `drcl_fast.cli.main` and appends SMALL_FLAGS and `--epochs 2` to `train`, `sweep` and `ablate`
  (argparse keeps a flag's last value, so these replace any size the line gives; `eval` runs as it
  is). A line with `--checkpoint_every N` gets N + 1 epochs instead, so that it writes a checkpoint.
  A line whose comment says it is interrupted runs in the background and is killed (SIGKILL, as a
  crash) once its first checkpoint is in `--out/checkpoints`; the lines after it continue the run.
  The lines that match NOT_RUN are left out, each for the reason given there; the drcl-fast
  command lines among them (also under torchrun) are parsed by the real parser, `build_parser()`,
  and the files the others name must exist. A block that reads what `make demo` writes
  (`runs/demo/`) first runs the Makefile's demo recipe (read from the Makefile) the same way.
- Blocks with no language are program output or a file tree, not commands: TEXT lists them.

A block of another language, a block with no language that TEXT does not describe, or a NOT_RUN
entry that matches no README line fails `test_every_block_is_accounted_for`.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from drcl_fast import config as drcl_config
from drcl_fast.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

SMALL_PRESET = dict(epochs=2, hidden_shape=32, output_shape=16, batch_size=200)
SMALL_FLAGS = ["--hidden_shape", "32", "--output_shape", "16", "--batch_size", "200"]   # and --epochs (WRAPPER)

# README lines (matched as substrings of a bash block's logical lines) that are not run, and why.
NOT_RUN = {
    "make demo": "installs .venv and trains the full mfeat preset into the tree's runs/demo; its drcl-fast "
                 "command, read from the Makefile, runs here before the block that reads runs/demo",
    "make test": "runs this whole suite, this file included",
    "drcl-fast train --datasets wiki": "needs the released wiki.mat, which is not bundled",
    "drcl-fast train --datasets xmedia": "needs the released XMediaFeatures.mat, which is not bundled",
    "drcl-fast eval --features_dir features --datasets wiki": "needs the released code's features/wiki_*.mat",
    "drcl-fast eval --files img.npz txt.pt": "img.npz and txt.pt stand for the reader's own files",
    "drcl-fast train --datasets coco --data_path coco.npz": "coco.npz stands for the reader's own container "
                                                            "(tests/training/test_learning_rates.py trains one)",
    "bench/cpu/bench_loss.py": "a benchmark of minutes; tests/test_bench_train_smoke.py runs it at a tiny size",
    "bench/cpu/loss_table.py": "reads the JSON the benchmark line writes; tests/test_bench_train_smoke.py runs it",
    "torchrun --nproc_per_node 4 -m drcl_fast train": "4 GPUs on the released xmedia data (torchrun over CPU "
                                                      "ranks: tests/training/test_distributed_training.py)",
    "torchrun --nnodes 2": "two machines",
    "torchrun --nproc_per_node 4 -m drcl_fast eval": "the NUS-WIDE features of a run (torchrun eval over CPU "
                                                     "ranks: tests/retrieval/test_sharded_map.py)",
}

# Blocks with no language, by their first line: what they show.
TEXT = {
    "test resutls@all:": "the result lines a run prints",
    "outputs:": "the summary of where a run's files went, as train prints it",
    "drcl-fast train: interrupted": "the line a run stopped by a signal prints",
    "drcl_fast/           Python API": "the source tree's layout",
}


@dataclass
class Block:
    language: str
    line: int          # of the opening fence, counted from 1
    text: str

    @property
    def id(self) -> str:
        return f"{self.language or 'text'}-L{self.line}"


def readme_blocks() -> list[Block]:
    blocks, lines = [], README.read_text(encoding="utf-8").splitlines()
    opening = None
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^\s*```(\S*)\s*$", line)
        if not fence:
            continue
        if opening is None:
            opening = (number, fence.group(1), len(line) - len(line.lstrip()))
        else:
            start, language, indent = opening
            body = [l[indent:] if l[:indent].strip() == "" else l for l in lines[start:number - 1]]
            blocks.append(Block(language, start, "\n".join(body) + "\n"))
            opening = None
    assert opening is None, f"README.md: the block opened at line {opening[0]} is never closed"
    return blocks


def logical_lines(script: str) -> list[str]:
    """The block's lines with backslash continuations joined; blank lines and whole-line comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def not_run_reason(line: str) -> str | None:
    return next((why for key, why in NOT_RUN.items() if key in line), None)


def drcl_argv(line: str) -> list[str] | None:
    """The drcl-fast arguments of a command line (`drcl-fast ...`, `python -m drcl_fast ...`, torchrun's)."""
    words = shlex.split(line, comments=True)
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):   # VAR=value prefixes
        words = words[1:]
    if words and words[0] == "drcl-fast":
        return words[1:]
    for i in range(len(words) - 1):
        if words[i] == "-m" and words[i + 1] == "drcl_fast":
            return words[i + 2:]
    return None


BLOCKS = readme_blocks()
CODE = [b for b in BLOCKS if b.language in ("python", "bash")]


def test_every_block_is_accounted_for():
    assert {b.language for b in BLOCKS} <= {"python", "bash", ""}, [b.id for b in BLOCKS]
    text = [b for b in BLOCKS if not b.language]
    unknown = [b.id for b in text if not any(b.text.startswith(first) for first in TEXT)]
    assert not unknown, f"blocks with no language that TEXT does not describe: {unknown}"
    bash_lines = [line for b in BLOCKS if b.language == "bash" for line in logical_lines(b.text)]
    stale = [key for key in NOT_RUN if not any(key in line for line in bash_lines)]
    assert not stale, f"NOT_RUN names lines the README no longer has: {stale}"
    assert len([b for b in BLOCKS if b.language == "python"]) >= 2


NOT_RUN_LINES = [(f"L{b.line}-{i}", line) for b in BLOCKS if b.language == "bash"
                 for i, line in enumerate(logical_lines(b.text)) if not_run_reason(line)]


@pytest.mark.parametrize("line", [line for _, line in NOT_RUN_LINES], ids=[name for name, _ in NOT_RUN_LINES])
def test_lines_not_run_still_parse(line):
    """A line the test cannot run: its drcl-fast arguments parse, and the files it names exist."""
    argv = drcl_argv(line)
    if argv is not None:
        try:
            build_parser().parse_args(argv)
        except SystemExit as error:
            pytest.fail(f"README line does not parse (exit {error.code}): {line}")
        return
    words = shlex.split(line, comments=True)
    if words[0] == "make":
        makefile = (REPO / "Makefile").read_text()
        assert all(re.search(rf"^{re.escape(t)}:", makefile, re.M) for t in words[1:]), line
        return
    named = [w for w in words if w.endswith(".py")]
    assert named and all((REPO / w).is_file() for w in named), line


def makefile_demo_commands() -> list[str]:
    """The Makefile's demo recipe, its make variables expanded and $(BIN)/ left off (the wrapper runs it)."""
    text = (REPO / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*[:?]?=\s*(.*?)\s*$", text, re.M))
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe, "the Makefile has no demo recipe"
    commands = []
    for line in recipe.group(1).splitlines():
        line = line.strip().replace("$(BIN)/", "")
        while (ref := re.search(r"\$\((\w+)\)", line)):
            line = line.replace(ref.group(0), variables[ref.group(1)])
        commands.append(line)
    assert any(c.startswith("drcl-fast train") for c in commands), commands
    return commands


def bash_script(block: Block) -> str:
    out = ["set -eu"]
    if "runs/demo/" in block.text:
        out += makefile_demo_commands()
    for line in logical_lines(block.text):
        if not_run_reason(line):
            out.append(f": not run: {shlex.quote(line)}")
        elif re.search(r"#.*\binterrupted\b", line):
            command = line.split("#", 1)[0].strip()
            checkpoints = Path(build_parser().parse_args(drcl_argv(line)).out) / "checkpoints"
            out.append(f"{command} &\npid=$!\n"
                       f"until ls {shlex.quote(str(checkpoints))}/*.pt >/dev/null 2>&1; do\n"
                       f"  kill -0 $pid 2>/dev/null || {{ echo 'the run ended before it could be interrupted' >&2; "
                       f"exit 1; }}\n  sleep 0.01\ndone\nkill -9 $pid\nwait $pid || true")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


WRAPPER = f"""import sys
from drcl_fast.cli import build_parser, main

argv = sys.argv[1:]
if argv[:1] in (["train"], ["sweep"], ["ablate"]):
    every = build_parser().parse_args(argv).checkpoint_every or 0
    argv += {SMALL_FLAGS!r} + ["--epochs", str(every + 1 if every > 0 else 2)]
sys.exit(main(argv))
"""


@pytest.fixture
def wrapper_bin(tmp_path) -> Path:
    """A folder holding `drcl-fast` (the command at a small size: WRAPPER) and `python`."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "drcl_fast_small.py"
    script.write_text(WRAPPER)
    wrapper = folder / "drcl-fast"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(script))} "$@"\n')
    wrapper.chmod(0o755)
    # The README's `python` is the environment's, where the package is installed (as for `drcl-fast`).
    python = folder / "python"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    return folder


# Bash blocks with a line to run; those whose every line is in NOT_RUN are only parsed (above).
RUNNABLE_BASH = [b for b in CODE if b.language == "bash" and not all(map(not_run_reason, logical_lines(b.text)))]


@pytest.mark.parametrize("block", RUNNABLE_BASH, ids=lambda b: b.id)
def test_bash_block_runs(block, tmp_path, wrapper_bin):
    script = bash_script(block)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{wrapper_bin}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, (f"README.md block at line {block.line} failed:\n{script}\n"
                                 f"--- stdout\n{run.stdout[-4000:]}\n--- stderr\n{run.stderr[-4000:]}")


@pytest.mark.parametrize("block", [b for b in CODE if b.language == "python"], ids=lambda b: b.id)
def test_python_block_runs(block, tmp_path, monkeypatch):
    monkeypatch.setitem(drcl_config.PRESETS, "mfeat", {**drcl_config.PRESETS["mfeat"], **SMALL_PRESET})
    monkeypatch.chdir(tmp_path)
    code = compile(block.text, f"README.md, block at line {block.line}", "exec")
    exec(code, {"__name__": "__readme__"})
