"""The project's GPU check runs on the current code. A GPU is lent to few sessions, so the check runs at tiny sizes
on the CPU here (`--tiny`): a check that broke since the last lease would otherwise be found only on the
lease, at the cost of its minutes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_at_tiny_sizes_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "SIMSLM_QUIET": "1"}

    def check(*arguments: str) -> None:
        done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), *arguments], env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

    check("prepare", "--out", str(tmp_path / "check"))
    for _ in range(2):  # a second check into the same folder starts afresh (it once refused its own rebuilt data)
        check("run", "--prepared", str(tmp_path / "check"), "--out", str(tmp_path / "out"), "--tiny")
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert result["status"] == {"done": 4}
    assert {run["run"] for run in result["runs"]} == {"qwen2-tiny-a", "qwen2-tiny-b", "llama-tiny-a", "llama-tiny-b"}
    extraction = result["extraction"]
    assert extraction["utterances"] == 8 and set(extraction["realtime_factor"]) == {"decoding in one thread", "default"}
    assert all(rate > 0 for rate in extraction["realtime_factor"].values())
