"""GPU suite section: `drcl-fast train` under torchrun on this GPU against the plain run.

The same short run on the bundled data twice, as users start it: `python -m drcl_fast
train ...` and `torchrun --nproc_per_node 1 --standalone -m drcl_fast train ...` (NCCL's
process group on one GPU); the files each leaves (PriorW/, features/, metrics.json) must be
equal byte for byte. Wall times of both are reported. `--smoke` runs it on the CPU (gloo).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpu_train import guarded

SECTION = "gpu_distributed"
REPO = Path(__file__).resolve().parents[2]
FULL = ["--epochs", "20", "--hidden_shape", "1024", "--output_shape", "512", "--batch_size", "140"]
SMOKE = ["--epochs", "2", "--hidden_shape", "32", "--output_shape", "16", "--batch_size", "200"]


def output_files(out: Path) -> dict[str, bytes]:
    paths = [*sorted(out.glob("PriorW/*.mat")), *sorted(out.glob("features/*.mat")), out / "metrics.json"]
    return {str(p.relative_to(out)): p.read_bytes() for p in paths if p.is_file()}


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - start


def compare(suite, sizes: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        train = ["-m", "drcl_fast", "train", "--datasets", "mfeat", *sizes, "--device", suite.device, "--quiet"]
        plain = timed([sys.executable, *train, "--out", f"{tmp}/plain"])
        launched = timed([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--standalone",
                          *train, "--out", f"{tmp}/torchrun"])
        a, b = output_files(Path(tmp) / "plain"), output_files(Path(tmp) / "torchrun")
        same = bool(a) and a == b
        suite.add(SECTION, "1-rank torchrun against the plain run" + (" (smoke)" if suite.smoke else ""),
                  f"{len(a)} files {'equal byte for byte' if same else 'DIFFER'}; plain {plain:.1f} s, "
                  f"torchrun {launched:.1f} s", "" if same else "FAIL")


def run(suite) -> None:
    guarded(suite, "torchrun", lambda: compare(suite, SMOKE if suite.smoke else FULL), SECTION)
