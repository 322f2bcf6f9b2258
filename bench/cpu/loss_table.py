"""The CPU loss (and RSC step) benchmarks' markdown table: times, speed-ups, the machine.

    .venv/bin/python bench/cpu/loss_table.py bench/results/loss_cpu.json [--memory] > bench/results/loss_cpu.md

Reads pytest-benchmark's --benchmark-json output of bench/cpu/bench_loss.py and/or
bench/cpu/bench_rsc_step.py; with --memory it also runs bench/cpu/loss_memory.py at the
benchmark's size and appends its table.
"""
from __future__ import annotations

import sys

import benchmark_table


def render(report: dict) -> str:
    groups: dict[str, dict[str, dict]] = {}
    for bench in report["benchmarks"]:
        groups.setdefault(bench["group"], {})[bench["extra_info"]["impl"]] = bench
    lines = ["# The RSC loss on the CPU", "",
             *benchmark_table.machine_lines(report),
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


def memory(report: dict) -> str:
    import loss_memory
    info = next(b["extra_info"] for b in report["benchmarks"] if "c" in b["extra_info"])
    return ("\n## Peak memory of one forward+backward beyond the inputs\n\n"
            + loss_memory.table(loss_memory.measure(info["b"], info["d"])))


def main(argv: list[str] | None = None) -> int:
    return benchmark_table.main(argv, __doc__, "bench/cpu/bench_loss.py or bench/cpu/bench_rsc_step.py", render,
                                "bench/cpu/loss_memory.py", memory)


if __name__ == "__main__":
    sys.exit(main())
