"""Peak resident memory a call adds beyond its inputs, measured in a fresh process. Linux only.

A script's cases each run in a new process (`in_child`: the script again, with `--child` and the
case's arguments), which loads its inputs, runs the call once at a tiny size to load libraries and
code paths, then measures it once (`added_peak`): the kernel's resident-set high-water mark reset
(/proc/self/clear_refs), the call, and VmHWM minus the resident set just before, the most memory
the call added at any moment, whoever allocated it (torch's allocator, numpy, the C++ extension,
BLAS). The child prints its result as one JSON line; `main` is the command line of such a script
(map_memory.py, loss_memory.py, search.py). On a GPU the suite reads torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now; VmHWM: the high-water mark)."""
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def added_peak(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(fn's result, its wall seconds, the most resident memory it added at any moment in MiB)."""
    Path("/proc/self/clear_refs").write_text("5")   # resets VmHWM to the current resident set
    before = status_kib("VmRSS")
    start = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - start
    return value, seconds, (status_kib("VmHWM") - before) / 1024


def in_child(script: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """The JSON line that `python SCRIPT --child ARGS` prints last."""
    done = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True, check=True,
                          env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None, doc: str, options: Callable[[argparse.ArgumentParser], None],
         child: Callable[..., dict], run: Callable[[argparse.Namespace], str]) -> int:
    """A script's command line: `options` adds its own; with the hidden `--child ARGS`, this process is one
    case's child and prints `child(*ARGS)` as JSON; without, it prints what `run(args)` returns."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    options(parser)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    print(json.dumps(child(*args.child)) if args.child else run(args))
    return 0
