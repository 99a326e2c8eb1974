#!/usr/bin/env bash
# The project's GPU check (issue 15): a sweep of two real architectures (random Qwen2 and Llama) at two sizes
# (~30M and ~120M parameters) in bf16 on one GPU, in under 8 minutes. It prints tokens/s, MFU against the
# bf16 matrix-product peak measured in the same run, peak memory, and the sweep's status.
#
# Here, once (the GPU machine has neither ../shared nor a network):
#   benchmarks/gpu_check.sh prepare            # writes .gpu/check (data + tokenizer, a few MB; git-ignored)
# On the GPU machine (the device tool: carry .gpu/check):
#   benchmarks/gpu_check.sh                    # results also in $OUT/gpu_check.json when $OUT is set
# On a CPU, to check the script itself (tiny sizes, numbers meaningless):
#   benchmarks/gpu_check.sh --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH=src
if [ "${1:-}" = prepare ]; then
  SIMSLM_MIRROR=${SIMSLM_MIRROR:-../shared/data} exec "$PYTHON" benchmarks/gpu_check.py prepare --out .gpu/check
fi
exec "$PYTHON" benchmarks/gpu_check.py run --prepared .gpu/check --out "${OUT:-/tmp/gpu_check}" "$@"
