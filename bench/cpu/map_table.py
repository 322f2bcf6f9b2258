"""The CPU MAP benchmark's markdown table: medians, ratios, MAPs, the machine.

    .venv/bin/python bench/cpu/map_table.py bench/results/map_cpu.json [--memory] > bench/results/map_cpu.md

Reads pytest-benchmark's --benchmark-json output of bench/cpu/bench_map.py; with
--memory it also runs bench/cpu/map_memory.py at the same size and appends its table.
"""
from __future__ import annotations

import datetime
import sys

import benchmark_table

ORDER = ["released", "torch", "torch@50", "cpp", "cpp@50", "matmul"]


def render(report: dict) -> str:
    by_labels: dict[str, dict[str, dict]] = {}
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        by_labels.setdefault(info["labels"], {})[info["impl"]] = {"median": bench["stats"]["median"], **info}
    first = next(iter(next(iter(by_labels.values())).values()))
    lines = [f"# MAP evaluation on the CPU ({first['size']} queries x {first['size']} gallery, D = {first['dim']})", "",
             *benchmark_table.machine_lines(report, " (OMP_NUM_THREADS)"),
             "- medians of 7 rounds (3 for the released algorithm), one warm-up each, all in one run", "",
             "| labels | implementation | median (s) | MAP | vs released | vs cpp | vs matmul |",
             "|---|---|---|---|---|---|---|"]
    for labels, impls in by_labels.items():
        for name in [n for n in ORDER if n in impls]:
            row = impls[name]
            value = f"{row['map']:.6f}" if "map" in row else "—"
            vs_cpp = f"{row['median'] / impls['cpp']['median']:.2f}x" if "cpp" in impls else "—"
            lines.append(f"| {labels} | {name} | {row['median']:.4f} | {value} | "
                         f"{impls['released']['median'] / row['median']:.1f}x | {vs_cpp} | "
                         f"{row['median'] / impls['matmul']['median']:.2f}x |")
    lines += ["", "Columns: 'vs released' = released time / this time (speed-up); 'vs cpp' and "
              "'vs matmul' = this time / that time. matmul = the float32 product of unit rows alone."]
    differences = {labels: impls["released"].get("map_difference") for labels, impls in by_labels.items()}
    lines.append("Released minus reference MAP@all (float64 distances against float32 scores): "
                 + ", ".join(f"{labels} {value:+.2e}" for labels, value in differences.items()) + ".")
    return "\n".join(lines)


def memory(report: dict) -> str:
    import map_memory
    size = report["benchmarks"][0]["extra_info"]["size"]
    return (f"\n## Peak memory beyond the inputs ({datetime.date.today().isoformat()})\n\n"
            + map_memory.table(map_memory.measure(size)))


def main(argv: list[str] | None = None) -> int:
    return benchmark_table.main(argv, __doc__, "bench/cpu/bench_map.py", render, "bench/cpu/map_memory.py", memory)


if __name__ == "__main__":
    sys.exit(main())
