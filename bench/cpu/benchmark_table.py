"""What the markdown tables made from pytest-benchmark's JSON share (map_table.py, loss_table.py): the
lines that state the date, machine and versions, and the command line, `REPORT [--memory]`, where
--memory appends a table of peak memory measured at the benchmark's size."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from machine import cpu_name


def versions() -> list[str]:
    import numpy
    import scipy
    import torch
    return [f"torch {torch.__version__}", f"numpy {numpy.__version__}", f"scipy {scipy.__version__}"]


def machine_lines(report: dict, threads_note: str = "") -> list[str]:
    """The date, the machine (with the first case's threads) and the versions, as list items."""
    machine = report["machine_info"]
    threads = report["benchmarks"][0]["extra_info"]["threads"]
    return [f"- date: {report['datetime'][:10]}",
            f"- machine: {cpu_name()}, {machine.get('cpu', {}).get('count', '?')} cores, {threads} threads"
            f"{threads_note}",
            f"- python {machine['python_version']}, {', '.join(versions())}"]


def main(argv: list[str] | None, doc: str, benchmark: str, render: Callable[[dict], str], memory_script: str,
         memory: Callable[[dict], str]) -> int:
    """Prints `render(report)` of the JSON of `benchmark`, then, with --memory, `memory(report)` (which runs
    `memory_script` at the report's size)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("report", help=f"pytest-benchmark JSON of {benchmark}")
    parser.add_argument("--memory", action="store_true", help=f"also measure peak memory ({memory_script})")
    args = parser.parse_args(argv)
    report = json.loads(Path(args.report).read_text())
    print(render(report))
    if args.memory:
        print(memory(report))
    return 0
