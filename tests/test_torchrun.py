import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

_RANK = """
import os, sys, time
if sys.argv[1] == "fail" and os.environ["RANK"] == "1":
    print("rank 1: error: what went wrong", file=sys.stderr)
    sys.exit(3)
time.sleep(60)
"""


@pytest.mark.slow
def test_torchrun_as_a_sweep_starts_it_ends_in_one_line(tmp_path):
    """torch's launcher ended a run stopped by SIGTERM (the sweep's, a scheduler's) with a SignalException
    traceback in the run's log, and one whose rank failed with a ChildFailedError traceback under the rank's own
    line. simslm's wrapper says either in one line, with the status of the signal or 1."""
    script = tmp_path / "rank.py"
    script.write_text(_RANK)

    def launch(how):
        return subprocess.Popen([sys.executable, "-m", "simslm.torchrun", "--standalone", "--log-dir", os.devnull,
                                 "--nproc_per_node", "2", str(script), how], cwd=REPO, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})

    stopped, failed = launch("sleep"), launch("fail")
    try:
        _, said = failed.communicate(timeout=120)
        assert failed.returncode == 1 and "Traceback" not in said and "rank 1: error: what went wrong" in said
        assert said.strip().splitlines()[-1] == "torchrun: rank 1 ended with exit status 3; its own error is above"
        time.sleep(1)  # the sleeping ranks are started by now (torchrun's own start took longer than the other's)
        stopped.send_signal(signal.SIGTERM)
        _, said = stopped.communicate(timeout=60)
        assert stopped.returncode == 128 + signal.SIGTERM and "Traceback" not in said
        assert said.strip().splitlines()[-1] == "torchrun: stopped by SIGTERM; its processes were stopped with it"
    finally:
        for process in (stopped, failed):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
