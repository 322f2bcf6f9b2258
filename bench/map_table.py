"""The CPU MAP benchmark's markdown table: medians, ratios, MAPs, the machine.

    .venv/bin/python bench/map_table.py bench/results/map_cpu.json [--memory] > bench/results/map_cpu.md

Reads pytest-benchmark's --benchmark-json output of bench/bench_map.py; with
--memory it also runs bench/map_memory.py at the same size and appends its table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

ORDER = ["released", "torch", "torch@50", "cpp", "cpp@50", "matmul"]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def render(report: dict) -> str:
    by_labels: dict[str, dict[str, dict]] = {}
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        by_labels.setdefault(info["labels"], {})[info["impl"]] = {"median": bench["stats"]["median"], **info}
    first = next(iter(next(iter(by_labels.values())).values()))
    machine = report["machine_info"]
    lines = [f"# MAP evaluation on the CPU ({first['size']} queries x {first['size']} gallery, D = {first['dim']})", "",
             f"- date: {report['datetime'][:10]}",
             f"- machine: {cpu_name()}, {machine.get('cpu', {}).get('count', '?')} cores, "
             f"{first['threads']} threads (OMP_NUM_THREADS)",
             f"- python {machine['python_version']}, {', '.join(versions())}",
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


def versions() -> list[str]:
    import numpy
    import scipy
    import torch
    return [f"torch {torch.__version__}", f"numpy {numpy.__version__}", f"scipy {scipy.__version__}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="pytest-benchmark JSON of bench/bench_map.py")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (bench/map_memory.py)")
    args = parser.parse_args(argv)
    report = json.loads(Path(args.report).read_text())
    print(render(report))
    if args.memory:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import map_memory
        size = report["benchmarks"][0]["extra_info"]["size"]
        print(f"\n## Peak memory beyond the inputs ({datetime.date.today().isoformat()})\n")
        print(map_memory.table(map_memory.measure(size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
