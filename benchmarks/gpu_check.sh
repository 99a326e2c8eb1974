#!/usr/bin/env bash
# The project's GPU check (issue 15): a sweep of two real architectures (random Qwen2 and Llama) at two sizes
# (~30M and ~120M parameters) in bf16 on one GPU, sized for about 3 minutes on an H200 (estimated from a run at
# 4x the budget, docs/BENCHMARKS.md 2026-12-04). It prints tokens/s, MFU against the
# bf16 matrix-product peak measured in the same run, peak memory, and the sweep's status; then `units extract` end
# to end on the GPU (FLAC files, a HuBERT-base-sized random model, bf16 checked against float32: gpu_check.py's
# `extraction`); then unit-extraction throughput (benchmarks/bench_extract.py on the GPU).
#
# Here, once (the GPU machine has neither ../shared nor a network):
#   benchmarks/gpu_check.sh prepare            # writes .gpu/check (data + tokenizer, a few MB; git-ignored)
# On the GPU machine (the device tool: carry .gpu/check):
#   benchmarks/gpu_check.sh                    # results also in $OUT/gpu_check.json when $OUT is set
# On a CPU, to check the script itself (tiny sizes, numbers meaningless):
#   benchmarks/gpu_check.sh --tiny
# benchmarks/gpu_lease.sh wraps this for the device tool (the wheels that machine lacks, then issue 17's race).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
if [ "${1:-}" = prepare ]; then
  SIMSLM_MIRROR=${SIMSLM_MIRROR:-../shared/data} exec "$PYTHON" benchmarks/gpu_check.py prepare --out .gpu/check
fi
"$PYTHON" benchmarks/gpu_check.py run --prepared .gpu/check --out "${OUT:-/tmp/gpu_check}" "$@"
# Unit extraction (issue 16): HuBERT-base-sized random encoders on the GPU, one at a time against batched, float32
# against float16/bfloat16 with the share of units that stay the same, and the projected time for 50,000 hours.
if [ "${1:-}" != --tiny ]; then
  "$PYTHON" benchmarks/bench_extract.py --device cuda --audio .gpu/check/audio --count 64 --batch-size 16 \
    --repeats 2 --json "${OUT:-/tmp/gpu_check}/extract.json"
fi
