import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from simslm import jobs


def test_journal_ignores_a_torn_last_line_and_appends_after_it(tmp_path):
    journal = jobs.Journal(tmp_path / "done.jsonl")
    journal.append({"id": "a", "value": 1})
    with open(journal.path, "a") as handle:
        handle.write('{"id": "b", "val')  # killed mid-write
    assert set(journal.read()) == {"a"}
    journal.append({"id": "c", "value": 3})
    assert set(journal.read()) == {"a", "c"}


def _square(x):
    return x * x


@pytest.mark.parametrize("num_workers", [1, 2])
def test_parallel_map_covers_every_task(num_workers):
    assert sorted(jobs.parallel_map(_square, range(6), num_workers=num_workers, total=6)) == [0, 1, 4, 9, 16, 25]


def test_a_worker_that_dies_ends_the_map_with_one_line_not_a_hang(tmp_path):
    # multiprocessing.Pool, which parallel_map used before, replaced the dead worker and waited forever for its task.
    # In a child process with a time limit, so that a hang fails the test instead of stopping the suite.
    script = tmp_path / "dies.py"
    script.write_text(textwrap.dedent("""
        import os
        from simslm import jobs

        def exit_on_three(x):
            if x == 3:
                os._exit(1)  # as the kernel's out-of-memory killer or a segfault in native code ends a worker
            return x

        if __name__ == "__main__":
            list(jobs.parallel_map(exit_on_three, range(8), num_workers=2, description="synth"))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "simslm.jobs.WorkerDied: synth: a worker process ended abruptly (exit status 1, by itself: any traceback is "
        "above; a script that starts simslm's workers needs `if __name__ == \"__main__\":`); re-run")


def test_a_script_that_starts_workers_from_its_top_level_is_told_why_they_died(tmp_path):
    """Without `if __name__ == "__main__":` each spawned worker imports the script again and fails in
    multiprocessing's RuntimeError; the pool said "re-run, with fewer workers if memory is short"."""
    script = tmp_path / "unguarded.py"
    script.write_text("from simslm import jobs\n"
                      "print(list(jobs.parallel_map(abs, [-1, -2, -3], num_workers=2, description='absolutes')))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "memory" not in done.stderr.strip().splitlines()[-1]
    assert "a script that starts simslm's workers needs `if __name__ == \"__main__\":`" in done.stderr


_KILLER = """
import os, signal, sys
from pathlib import Path
from simslm import jobs

def run(x):
    marker = Path(sys.argv[3])
    if x == 3 and not (sys.argv[2] == "once" and marker.exists()):
        marker.touch()
        if sys.argv[2] == "raise":
            raise ValueError("a Python error is not a death")
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer ends a process: no word, no finally
    return x

if __name__ == "__main__":
    journal = jobs.TaskJournal(Path(sys.argv[3]).with_name("journal"), key=lambda x: f"t{x}",
                               skipped=lambda x, reason: f"t{x} {reason}")
    results = jobs.parallel_map(run, range(8), num_workers=int(sys.argv[1]), description="synth", journal=journal)
    print(sorted(results, key=str))
"""


@pytest.mark.parametrize("num_workers", [1, 2])
def test_a_task_that_ends_its_process_is_named_then_skipped_in_the_next_runs(tmp_path, num_workers):
    # A worker killed (2 workers), or the command's own process (1: as on a GPU); each run a fresh process.
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)

    def run(behaviour="always"):
        return subprocess.run([sys.executable, str(script), str(num_workers), behaviour, str(tmp_path / "marker")],
                              capture_output=True, text=True, timeout=120)

    first = run()
    if num_workers == 1:
        assert first.returncode == -signal.SIGKILL
    else:
        assert first.returncode == 1 and first.stderr.strip().splitlines()[-1] == (
            "simslm.jobs.WorkerDied: synth: a worker process ended abruptly (killed by SIGKILL: out of memory, most "
            "likely) while running t3; re-run (with fewer workers if memory is short): a task that ends the process "
            "running it 2 times is skipped and counted")
    second = run()
    assert second.returncode == first.returncode
    assert ("simslm synth: warning: an earlier run's process ended while running t3; running it again (skipped "
            "once it has ended a process 2 times)") in second.stderr
    for _ in range(2):  # the skip is kept once the run is done
        third = run()
        assert third.returncode == 0, third.stderr
        assert "simslm synth: warning: skipping t3: it ended the process running it in 2 earlier runs" in third.stderr
        assert third.stdout.strip() == "[0, 1, 2, 4, 5, 6, 7, 't3 ended the process running it']"
    assert [json.loads(line) for line in (tmp_path / "journal").read_text().splitlines()] == [
        {"carried": "t3", "times": 2}]


def test_a_death_noted_after_a_line_torn_by_a_killed_worker_counts(tmp_path):
    """The pool's break ends the other workers (SIGTERM); one ended mid-line leaves a torn line, to which the
    parent's note of the death was appended: one unreadable line, and the death lost (the third run of the test
    above then ran t3 again: a CI flake). The note now starts on a line of its own, as a new attempt's header does."""
    import socket

    host, path = socket.gethostname(), tmp_path / "journal"
    lines = [{"attempt": {"id": "a", "pid": 111, "host": host, "in_process": False}}, {"attempt": "a", "running": "t3"},
             {"attempt": {"id": "b", "pid": 222, "host": host, "in_process": False}}, {"attempt": "b", "running": "t4"}]
    watch = jobs._Watch(jobs.TaskJournal(path, key=str, skipped=lambda task, reason: reason), "synth")
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"attempt": "b", "runn')  # this run's
    assert watch.note_deaths({111: -9}) == ["t3"]
    assert jobs._earlier_deaths(path)[0] == {"t3": 1}
    jobs._note_running(path, "t5", in_process=True)  # a new attempt after another torn line keeps its header
    path.write_text(path.read_text() + '{"attempt": "c", "runn')
    jobs._running_handles.pop(str(path))[0].close()
    jobs._note_running(path, "t6", in_process=False)
    jobs._running_handles.pop(str(path))[0].close()
    assert sorted(attempt["last"] for attempt in jobs._attempts(path).values()) == ["t3", "t4", "t5", "t6"]


def test_a_task_run_to_its_end_is_cleared_and_a_python_error_is_no_death(tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)

    def run(behaviour):
        return subprocess.run([sys.executable, str(script), "1", behaviour, str(tmp_path / "marker")],
                              capture_output=True, text=True, timeout=120)

    assert run("once").returncode == -signal.SIGKILL
    again = run("once")  # killed the first time only
    assert again.returncode == 0 and "running it again" in again.stderr and "t3 " not in again.stdout
    assert not (tmp_path / "journal").exists()  # cleared: nothing held against any task
    (tmp_path / "marker").unlink()
    for _ in range(3):
        failed = run("raise")  # ends the command, through its finally: it says the attempt stopped
        assert failed.returncode == 1 and "ValueError: a Python error is not a death" in failed.stderr
        assert "earlier run" not in failed.stderr
    assert jobs._earlier_deaths(tmp_path / "journal")[0] == {}


def _sleep_unless_zero(x):
    import time

    if x:
        time.sleep(120)
    return x


def test_a_map_left_early_stops_its_workers_at_once():
    """As Ctrl-C or an error in the caller leaves it: no worker goes on to its queued task, and none outlives it."""
    import multiprocessing
    import time

    before = set(multiprocessing.active_children())
    results = jobs.parallel_map(_sleep_unless_zero, range(6), num_workers=2)
    assert next(results) == 0
    started = time.monotonic()
    results.close()
    while set(multiprocessing.active_children()) - before and time.monotonic() - started < 30:
        time.sleep(0.1)
    assert not set(multiprocessing.active_children()) - before


def test_progress_without_a_terminal_writes_plain_lines_with_rate_eta_and_notes(monkeypatch, capsys):
    monkeypatch.setenv(jobs.LOG_EVERY_SEC_VARIABLE, "0")  # a line at every item
    seen = []
    tracker = jobs.Progress(4, "train", unit="step")
    for step in range(4):
        seen.append(step)
        tracker.note(loss=2.5 - step / 10, lr=5e-4)
        tracker.update()
    tracker.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and lines[0].startswith("[train] 1/4 (25%)") and "step/s" in lines[0]  # no repeat at close
    assert "ETA" in lines[0] and "loss 2.5" in lines[0] and "lr 0.0005" in lines[0]
    assert lines[3].startswith("[train] 4/4 (100%)")
    assert list(jobs.progress(range(3), "x")) == [0, 1, 2]  # iterating reports too


def test_a_sigterm_soon_after_the_first_is_the_same_request_and_a_later_one_ends_the_process(monkeypatch):
    """A scheduler signals every process of a job and a sweep forwards the signal to its runs: a run gets two
    SIGTERMs for one request, which must not end it before its checkpoint. A SIGTERM well after the first insists."""
    clock, killed = [100.0], []
    monkeypatch.setattr(jobs, "_first_sigterm", [])
    monkeypatch.setattr(jobs.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(jobs.os, "kill", lambda pid, signum: killed.append((pid, signum)))
    monkeypatch.setattr(jobs.signal, "signal", lambda signum, handler: killed.append(("handler", handler)))
    with pytest.raises(jobs.Stopped):  # the command's handler: the first one stops it
        jobs.stop_on_sigterm(signal.SIGTERM, None)
    clock[0] += jobs.SIGTERM_REPEAT_S
    jobs.stop_on_sigterm(signal.SIGTERM, None)  # the same request again: nothing raised, nothing killed
    assert jobs.first_sigterm() is False and killed == []  # training's handler asks the same
    clock[0] += 0.1
    jobs.first_sigterm()
    assert killed == [("handler", signal.SIG_DFL), (os.getpid(), signal.SIGTERM)]


@pytest.mark.parametrize("own_proc", [True, False])
def test_proc_of_another_pid_namespace_is_told_apart(own_proc):
    # `unshare --pid --fork` leaves the parent namespace's /proc in place (its /proc/1 is the machine's init, not
    # the command, pid 1 in its own namespace); `--mount-proc` mounts the namespace's own.
    if subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare --pid` (util-linux, as root) to make a PID namespace")
    told = subprocess.run(["unshare", "--pid", "--fork", *(["--mount-proc"] if own_proc else []), sys.executable, "-c",
                           "from simslm import jobs; print(jobs.proc_shows_this_namespace())"],
                          capture_output=True, text=True, timeout=60)
    assert told.returncode == 0, told.stderr[-2000:]
    assert told.stdout.strip() == str(own_proc)
