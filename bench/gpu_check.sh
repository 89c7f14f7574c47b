#!/usr/bin/env bash
# One prepared GPU check of the Triton kernels (see bench/gpu_check.py); finishes in under 6 minutes.
#   bench/gpu_check.sh             on a CUDA machine: full numbers to $OUT/gpu_check.json, table last
#   bench/gpu_check.sh --dry-run   anywhere: tiny shapes on CPU under the Triton interpreter
# Needs only torch + triton (flash-attn used when importable); hpo_engine need not be installed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
if [ "${1:-}" = "--dry-run" ]; then export TRITON_INTERPRET=1; fi
{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(hostname)"; echo "args: $*"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$OUT/env.txt" 2>&1
# 350 s hard stop: the script itself stops optional stages at 330 s
timeout -k 5 350 "$PY" bench/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "gpu_check: killed at the 350 s limit; partial numbers in $OUT/gpu_check.json"
exit "$rc"
