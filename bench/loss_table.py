"""The CPU loss (and RSC step) benchmarks' markdown table: times, speed-ups, the machine.

    .venv/bin/python bench/loss_table.py bench/results/loss_cpu.json [--memory] > bench/results/loss_cpu.md

Reads pytest-benchmark's --benchmark-json output of bench/bench_loss.py and/or
bench/bench_rsc_step.py; with --memory it also runs bench/loss_memory.py at the
benchmark's size and appends its table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from map_table import cpu_name, versions  # noqa: E402


def render(report: dict) -> str:
    groups: dict[str, dict[str, dict]] = {}
    for bench in report["benchmarks"]:
        groups.setdefault(bench["group"], {})[bench["extra_info"]["impl"]] = bench
    machine = report["machine_info"]
    threads = report["benchmarks"][0]["extra_info"]["threads"]
    lines = [f"- date: {report['datetime'][:10]}",
             f"- machine: {cpu_name()}, {machine.get('cpu', {}).get('count', '?')} cores, {threads} threads",
             f"- python {machine['python_version']}, {', '.join(versions())}",
             "- every case in one run; speed-up = reference time / fast time, of the medians and of the minima;",
             "  interleaved: the two timed in alternation within the fast case (bench_loss.py), where given",
             "", "| case | implementation | median (ms) | min (ms) | speed-up (median) | speed-up (min) "
                 "| speed-up (interleaved) |",
             "|---|---|---|---|---|---|---|"]
    for group, impls in groups.items():
        ref = impls["torch"]["stats"]
        for name, bench in impls.items():
            s = bench["stats"]
            alternating = bench["extra_info"].get("interleaved_speedup")
            lines.append(f"| {group} | {name} | {s['median'] * 1e3:.1f} | {s['min'] * 1e3:.1f} | "
                         f"{ref['median'] / s['median']:.2f}x | {ref['min'] / s['min']:.2f}x | "
                         f"{'-' if alternating is None else f'{alternating:.2f}x'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="pytest-benchmark JSON of bench/bench_loss.py or bench/bench_rsc_step.py")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (bench/loss_memory.py)")
    args = parser.parse_args(argv)
    report = json.loads(Path(args.report).read_text())
    print("# The RSC loss on the CPU\n")
    print(render(report))
    if args.memory:
        import loss_memory
        info = next(b["extra_info"] for b in report["benchmarks"] if "c" in b["extra_info"])
        print("\n## Peak memory of one forward+backward beyond the inputs\n")
        print(loss_memory.table(loss_memory.measure(info["b"], info["d"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
