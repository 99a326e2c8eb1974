#!/usr/bin/env bash
# One GPU lease, prepared here and run there in one call: the project's GPU check (its sweep, `units extract` end to
# end, and the extraction benchmark),
# then issue 17's race of `simslm train` (eager, --compile, and compiled with --attention flex_attention or with
# slamkit's bf16 weights, `--precision bf16-weights`, which has no autocast casts: 19% of the GPU's time in the
# ninth session's profile) against a plain HF Trainer at about 170M parameters. A profile of a 25M-parameter step
# (benchmarks/profile_train.py) ran in the lease of 2026-12-04 (ninth session) and is off unless PROFILE_SECONDS
# is set. Boxes sized from that lease: the check took 166 s for its sweep and 41 s for the extraction benchmark
# (its end-to-end extraction, added since, is estimated at 30 s), and the race finished 7 runs in 320 s.
#
# Here, once (needs the package registry; writes .gpu/check and .whl/, both git-ignored):
#   benchmarks/gpu_lease.sh prepare
# With the device tool (carry .gpu and .whl; each part is time-boxed so the call ends inside 10 minutes):
#   bash benchmarks/gpu_lease.sh            # logs and JSON under $OUT
# and, in a second call on the warm machine, train's check that packed documents stay apart (about a minute; flex
# attention compiles its kernel for the check's shapes):
#   CHECK_SECONDS=0 RACE_SECONDS=0 APART_SECONDS=90 bash benchmarks/gpu_lease.sh
#
# The device image (Python 3.12, its own torch and transformers) lacks two of simslm's imports, soundfile and
# soxr (seen 2026-12-04): they travel as wheels, with cffi and pycparser under soundfile.
set -u
cd "$(dirname "$0")/.."
if [ "${1:-}" = prepare ]; then
  benchmarks/gpu_check.sh prepare
  rm -f .whl/*.whl  # one version of each: two stop the install there
  for wheel in soundfile soxr cffi pycparser; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl "$wheel" || exit 1
  done
  exit 0
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_lease}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 3
export PYTHONPATH=/tmp/site
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc
  python3 -c "import torch, transformers, numpy; print(torch.__version__, transformers.__version__, numpy.__version__)"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
if [ "${CHECK_SECONDS:-275}" -gt 0 ]; then
  start=$(date +%s)
  OUT=/tmp/gpu_check timeout "${CHECK_SECONDS:-275}" benchmarks/gpu_check.sh > "$OUT/gpu_check.log" 2>&1
  echo "rc=$? after $(( $(date +%s) - start )) s" >> "$OUT/gpu_check.log"
  grep -v "Writing\|it/s\]" "$OUT/gpu_check.log" | tail -30
  cp /tmp/gpu_check/*.json "$OUT/" 2>/dev/null
  (cd /tmp/gpu_check && find sweep -name '*.log' -o -name '*.json' -o -name '*.jsonl' | tar czf "$OUT/sweep.tgz" -T -)
fi
if [ "${RACE_SECONDS:-295}" -gt 0 ]; then
  start=$(date +%s)
  timeout "${RACE_SECONDS:-295}" env PYTHONPATH=src:/tmp/site python3 benchmarks/bench_train.py --device cuda \
    --text-corpus .gpu/check/stories.jsonl --tokenizer .gpu/check/tokenizer --context-length 1024 --batch-size 16 \
    --depths "" --compare-depths 15:64 --steps 40 --repeats 2 --compile --attentions flex_attention \
    --also-precision bf16-weights --options-compiled-only --trainers plain > "$OUT/bench_train.log" 2>&1
  echo "rc=$? after $(( $(date +%s) - start )) s" >> "$OUT/bench_train.log"
  grep -v "train_runtime\|it/s\]" "$OUT/bench_train.log" | tail -25
fi
if [ "${APART_SECONDS:-0}" -gt 0 ]; then  # train's check that packed documents stay apart, per kernel, on the GPU
  start=$(date +%s)
  timeout "$APART_SECONDS" env PYTHONPATH=src:/tmp/site python3 benchmarks/bench_documents_apart.py --device cuda \
    --kernels sdpa,eager,flex_attention,auto > "$OUT/documents_apart.log" 2>&1
  echo "rc=$? after $(( $(date +%s) - start )) s" >> "$OUT/documents_apart.log"
  cat "$OUT/documents_apart.log"
fi
if [ "${PROFILE_SECONDS:-0}" -gt 0 ]; then
  start=$(date +%s)
  timeout "$PROFILE_SECONDS" env PYTHONPATH=src:/tmp/site python3 benchmarks/profile_train.py --device cuda \
    --data .gpu/check --member 8:64 --batch-size 16 --context-length 1024 --steps 30 > "$OUT/profile.log" 2>&1
  echo "rc=$? after $(( $(date +%s) - start )) s" >> "$OUT/profile.log"
  grep -v "it/s\]" "$OUT/profile.log" | tail -60
fi
