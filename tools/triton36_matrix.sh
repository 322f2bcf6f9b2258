#!/usr/bin/env bash
# The compile matrix (tools/kernel_matrix.py) under Triton 3.6.0, the oldest Triton the
# GPU suite may meet, beside the CPU torch 2.13 of the project's venv.
#
#   tools/triton36_matrix.sh                 # venv in /tmp/drcl-triton36, sm_80 + sm_90
#   VENV=/path ARCHS=sm_90 SHAPES=prod CONFIGS=lazy tools/triton36_matrix.sh
#
# Writes bench/results/kernels_triton36_<date>.txt (the summary: every failing variant,
# the counts) and bench/results/kernels_triton36_<arch>_<date>.md (the resource tables).
# Exit status: that of the matrix (1 when a check fails), or 2 when the venv cannot be built.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-/tmp/drcl-triton36}"
PYTHON="${PYTHON:-python3}"
ARCHS="${ARCHS:-sm_80,sm_90}"
SHAPES="${SHAPES:-prod,test}"
CONFIGS="${CONFIGS:-prod-all}"
JOBS="${JOBS:-2}"
TORCH_PIN="${TORCH_PIN:-torch==2.13.0}"   # the CPU build on disk; a bare `torch` would pull CUDA wheels
DAY="$(date -u +%Y-%m-%d)"
OUT="$ROOT/bench/results"
mkdir -p "$OUT"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV" || exit 2
fi
"$VENV/bin/pip" install --quiet "$TORCH_PIN" || exit 2
# torch 2.13 declares no triton dependency on the CPU build; pin 3.6.0 explicitly.
"$VENV/bin/pip" install --quiet "triton==3.6.0" numpy scipy h5py tqdm || exit 2
"$VENV/bin/python" - <<'EOF' || exit 2
import torch, triton
assert triton.__version__.startswith("3.6"), triton.__version__
assert not torch.version.cuda, f"a CUDA torch was installed: {torch.version.cuda}"
print("torch", torch.__version__, "triton", triton.__version__)
EOF

# drcl_fast from the source tree, not installed: kernel_matrix maps kernels/ to
# drcl_fast.kernels itself when the package is not installed.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$VENV/triton-cache}"
SUMMARY="$OUT/kernels_triton36_$DAY.txt"
start=$(date +%s)
"$VENV/bin/python" "$ROOT/tools/kernel_matrix.py" --arch "$ARCHS" --shapes "$SHAPES" --configs "$CONFIGS" \
    --jobs "$JOBS" --table --table-prefix kernels_triton36 > "$SUMMARY.tmp" 2>&1
rc=$?
{
  echo "# tools/kernel_matrix.py under Triton 3.6.0 ($(date -u '+%Y-%m-%d %H:%M UTC'), $(( $(date +%s) - start )) s, exit $rc)"
  echo "# tools/triton36_matrix.sh: ARCHS=$ARCHS SHAPES=$SHAPES CONFIGS=$CONFIGS"
  cat "$SUMMARY.tmp"
} > "$SUMMARY"
rm -f "$SUMMARY.tmp"
tail -n 3 "$SUMMARY"
echo "wrote ${SUMMARY#$ROOT/}"
exit $rc
