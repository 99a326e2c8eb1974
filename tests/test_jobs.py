import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from simslm import jobs
from tests.conftest import slurm_without_accounting


def test_journal_ignores_a_torn_last_line_and_appends_after_it(tmp_path):
    journal = jobs.Journal(tmp_path / "done.jsonl")
    journal.append({"id": "a", "value": 1})
    with open(journal.path, "a") as handle:
        handle.write('{"id": "b", "val')  # killed mid-write
    assert set(journal.read()) == {"a"}
    journal.append({"id": "c", "value": 3})
    assert set(journal.read()) == {"a", "c"}


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    jobs.write_json(path, {"good": True})
    with pytest.raises(RuntimeError), jobs.atomic_path(path) as temporary:
        temporary.write_text('{"half": ')
        raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"good": True}
    assert os.listdir(tmp_path) == ["result.json"]


def test_writing_a_file_where_a_folder_is_names_the_folder(tmp_path):
    # The rename failed naming the temporary file (".x.123.tmp: is a directory"), which the user never chose.
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match=r"x: a folder, where a file is needed"):
        jobs.write_json(tmp_path / "x", {})
    assert os.listdir(tmp_path) == ["x"]
    # The same from a file written through `atomic_path` (a manifest streamed out line by line).
    with pytest.raises(ValueError, match=r"x: a folder, where a file is needed"), jobs.atomic_path(
            tmp_path / "x") as temporary:
        temporary.write_text("a line\n")
    assert os.listdir(tmp_path) == ["x"]


def test_a_folder_another_process_filled_meanwhile_is_not_replaced_unless_asked(tmp_path):
    """Two `sequences build` into one new --out: each found it empty, each said "built", and the later one's output
    silently replaced the earlier's."""
    out = tmp_path / "seq"
    with pytest.raises(ValueError, match="seq: another process filled it while this one was building"):
        with jobs.atomic_path(out, replace=False) as building:
            building.mkdir()
            (building / "index.json").write_text("mine")
            out.mkdir()  # the other build, finished first
            (out / "index.json").write_text("theirs")
    assert (out / "index.json").read_text() == "theirs" and os.listdir(tmp_path) == ["seq"]
    (out / "index.json").unlink()  # an empty folder (made by the user beforehand) is taken
    with jobs.atomic_path(out, replace=False) as building:
        building.mkdir()
        (building / "index.json").write_text("mine")
    assert (out / "index.json").read_text() == "mine"
    with jobs.atomic_path(out) as building:  # asked to replace (--overwrite): replaced
        building.mkdir()
        (building / "index.json").write_text("again")
    assert (out / "index.json").read_text() == "again"


def test_a_line_that_is_not_utf8_comes_with_its_own_number_and_the_lines_after_it_are_read(tmp_path):
    # Text mode decodes a block at a time: the error surfaced before the block's first line was seen, so a bad
    # byte on line 3,000 was reported on line 1 (of a small file) or on some line before it.
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"".join(b"line %d\r\n" % n for n in range(1, 3000)) + b"caf\xe9\nlast\n")
    lines = list(jobs.text_lines(path))
    assert len(lines) == 3001 and lines[0] == ("line 1\n", "") and lines[-1] == ("last\n", "")
    assert lines[2999] == (None, "not UTF-8 text (byte 4 of the line)")


def test_a_binary_file_read_as_text_is_refused_whole(tmp_path, capsys):
    """A FLAC or .npy given as a manifest or corpus: some of its "lines" decode, and `sequences build --text-corpus
    X.flac` built text samples of them; a manifest's error listed a problem for each of its 472 "lines"."""
    import soundfile

    from simslm.cli import main

    flac = tmp_path / "a.flac"
    soundfile.write(flac, np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match=r"a.flac: binary data, not UTF-8 text \(a NUL byte at byte \d+"):
        list(jobs.text_lines(flac))
    (tmp_path / "utf16.txt").write_text("Once upon a time\n", encoding="utf-16")
    with pytest.raises(ValueError, match="UTF-16 text must be converted to UTF-8"):
        list(jobs.text_lines(tmp_path / "utf16.txt"))
    assert main(["sequences", "build", "--out", str(tmp_path / "seq"), "--streams", "text", "--text-corpus", str(flac),
                 "--context-length", "64"]) == 2
    assert "a.flac: binary data" in capsys.readouterr().err and not (tmp_path / "seq").exists()


def _add_entries(path: str, tag: str, count: int) -> None:
    for index in range(count):
        jobs.update_json(path, lambda value: {**value, f"{tag}-{index}": index})


def test_processes_merging_into_one_json_file_keep_each_others_entries(tmp_path):
    # Two `simslm eval` of one run merge into its eval.json. Read and written without a lock, 25 of 200 entries
    # were lost this way (2 processes x 100 merges).
    import multiprocessing

    path = tmp_path / "eval.json"
    workers = [multiprocessing.get_context("fork").Process(target=_add_entries, args=(str(path), tag, 150))
               for tag in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert json.loads(path.read_text()) == {f"{tag}-{index}": index for tag in "ab" for index in range(150)}


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    final = tmp_path / "data"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), jobs.atomic_path(final) as staging:
        staging.mkdir()
        (staging / "new.txt").write_text("new")
        raise RuntimeError("killed")
    assert [p.name for p in final.iterdir()] == ["old.txt"]
    with jobs.atomic_path(final) as staging:
        staging.mkdir()
        (staging / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_a_folder_never_replaces_a_file_and_a_foreign_folder_is_refused_before_the_work(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(ValueError, match="notes.txt: a file, where a folder is needed"), \
            jobs.atomic_path(notes) as staging:
        staging.mkdir()
        (staging / "made.txt").write_text("made")
    assert notes.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["notes.txt"]
    with pytest.raises(ValueError, match="notes.txt: a file, where a folder is needed; write elsewhere"):
        jobs.check_replaceable(notes, "made.json", "a thing made", "write elsewhere")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "a.txt").write_text("theirs")
    with pytest.raises(ValueError, match=r"theirs: not empty, and not a thing made \(no made.json\); write elsewhere"):
        jobs.check_replaceable(tmp_path / "theirs", "made.json", "a thing made", "write elsewhere")
    with pytest.raises(ValueError, match=r"theirs: not empty; write elsewhere"):
        jobs.check_replaceable(tmp_path / "theirs", None, "", "write elsewhere")
    (tmp_path / "theirs" / "made.json").write_text("{}")
    jobs.check_replaceable(tmp_path / "theirs", "made.json", "a thing made", "write elsewhere")  # ours to replace
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "nowhere"):
        jobs.check_replaceable(path, None, "", "write elsewhere")


def test_the_temporary_name_keeps_the_suffix_writers_check(tmp_path):
    import numpy as np

    with jobs.atomic_path(tmp_path / "shard.npy") as temporary:
        assert temporary.suffix == ".npy" and temporary.parent == tmp_path
        np.save(temporary, np.arange(3))  # np.save would add .npy to a name without it
    assert np.load(tmp_path / "shard.npy").tolist() == [0, 1, 2]


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


def test_portable_paths_follow_their_folder_and_fall_back_to_where_they_were(tmp_path):
    (tmp_path / "a" / "data").mkdir(parents=True)
    (tmp_path / "a" / "sweep").mkdir()
    recorded = jobs.portable_path(tmp_path / "a" / "data", tmp_path / "a" / "sweep")
    assert recorded["relative"] == "../data"
    assert jobs.placed_path(recorded, tmp_path / "elsewhere") == tmp_path / "a" / "data"  # copied alone
    (tmp_path / "a").rename(tmp_path / "b")
    assert jobs.placed_path(recorded, tmp_path / "b" / "sweep") == tmp_path / "b" / "sweep" / ".." / "data"
    assert jobs.placed_path("as/given", tmp_path) == Path("as/given")  # older files stored plain strings


_FAULTS = """
import resource, sys
import numpy as np
from simslm import cli, jobs
if sys.argv[1] == "library":
    jobs.keep_freed_memory()
elif sys.argv[1] == "cli":
    cli.main(["sweep", "status", "/nonexistent"])  # any command, even one that fails
print(jobs._freed_memory_kept)
def faults():  # a step's worth of blocks over malloc's thresholds, freed together
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        blocks = [np.ones(3 << 19, dtype=np.uint8) for _ in range(8)]
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
print(faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
@pytest.mark.parametrize("how", ["library", "cli"])
def test_freed_memory_is_kept_for_reuse_unless_the_user_set_malloc(how):
    def run(*extra, **environment):
        env = {name: value for name, value in os.environ.items()
               if name not in (*jobs._MALLOC_SETTINGS, "SIMSLM_KEEP_FREED_MEMORY")}
        output = subprocess.run([sys.executable, "-c", _FAULTS, *extra], capture_output=True, text=True, check=True,
                                env={**env, **environment}).stdout.split()
        return output[-2] == "True", int(output[-1])

    default = run("none")
    kept = run(how)
    assert kept[0] and kept[1] < default[1] / 100  # 8 x 1.5 MiB freed and taken again: ~30k page faults by default
    for setting in ({"MALLOC_TRIM_THRESHOLD_": "131072"}, {"SIMSLM_KEEP_FREED_MEMORY": "0"}):
        users = run(how, **setting)  # the user's own setting wins
        assert not users[0] and users[1] > default[1] / 2


@pytest.mark.parametrize("tasks", [1, 2])
def test_a_slurm_executor_warns_ahead_and_ends_a_job_whose_task_died(tmp_path, monkeypatch, tasks):
    """What a SLURM job is submitted with (submitit needs only `srun` on the PATH to build its sbatch options):
    the time-limit warning `warning_s` ahead, and for a job of several tasks, srun's kill-on-bad-exit."""
    pytest.importorskip("submitit")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    executor = jobs.submitit_executor(tmp_path / "jobs", "slurm", timeout_min=60, tasks_per_node=tasks,
                                      warning_s=120, slurm_partition="gpu")
    assert executor.parameters["signal_delay_s"] == 120 and executor.parameters["partition"] == "gpu"
    assert executor.parameters.get("srun_args") == (["--kill-on-bad-exit=1"] if tasks > 1 else None)


def _lock_from_another_process(path) -> str:
    code = ("import sys\nfrom simslm import jobs\ntry:\n    with jobs.exclusive_lock(sys.argv[1], 'x'):\n"
            "        print('taken')\nexcept jobs.Busy:\n    print('refused')")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_an_exclusive_lock_is_refused_to_another_process_at_once_and_taken_again_in_its_own(tmp_path,
                                                                                            lock_held_elsewhere):
    path = tmp_path / "run" / ".lock"
    pid, release = lock_held_elsewhere(path)
    with pytest.raises(jobs.Busy, match=rf"^run is busy \(held by process {pid} on .+\)$"):
        with jobs.exclusive_lock(path, "run is busy"):
            pass
    release()
    with jobs.exclusive_lock(path, "run is busy"):
        with jobs.exclusive_lock(tmp_path / "run" / ".." / "run" / ".lock", "run is busy"):  # a sweep, then train
            pass
        assert _lock_from_another_process(path) == "refused"  # the inner block did not release it
    assert _lock_from_another_process(path) == "taken"


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


def test_default_workers_keep_to_a_containers_cpu_quota(tmp_path, monkeypatch):
    """A container limited to some CPUs (a Kubernetes pod's `limits.cpu`) still sees every core of its host in its
    affinity; the pools size themselves by the limit, read from cgroup v2's cpu.max or v1's CFS files."""
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(jobs, "CGROUP_ROOT", tmp_path)
    assert jobs.cgroup_cpu_quota() is None and jobs.default_workers() == cores  # no cgroup files: no limit
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert jobs.cgroup_cpu_quota() is None and jobs.default_workers() == cores
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: one worker
    assert jobs.cgroup_cpu_quota() == 0.5 and jobs.default_workers() == 1
    (tmp_path / "cpu.max").write_text(f"{100000 * (cores + 3)} 100000\n")  # more than the cores: the cores
    assert jobs.default_workers() == cores
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert jobs.cgroup_cpu_quota() == 1.5 and jobs.default_workers() == min(cores, 2)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no limit"
    assert jobs.cgroup_cpu_quota() is None


def test_threads_keep_to_a_containers_cpu_quota_unless_set(tmp_path, monkeypatch):
    """torch and BLAS start a thread per core they see; under a CPU quota below the cores, OMP_NUM_THREADS is set to
    the quota before they load (`simslm` does it as it starts), unless the user set it."""
    monkeypatch.setattr(jobs, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(jobs, "_affinity_cores", lambda: 64)  # a large host, whatever this machine is
    environ: dict[str, str] = {}
    jobs.threads_within_quota(environ)
    assert environ == {}  # no quota
    (tmp_path / "cpu.max").write_text("350000 100000\n")
    jobs.threads_within_quota(environ)
    assert environ == {"OMP_NUM_THREADS": "4"}
    given = {"OMP_NUM_THREADS": "16"}
    jobs.threads_within_quota(given)
    assert given == {"OMP_NUM_THREADS": "16"}
    (tmp_path / "cpu.max").write_text(f"{100000 * 64} 100000\n")  # a quota of every core: nothing to do
    fresh: dict[str, str] = {}
    jobs.threads_within_quota(fresh)
    assert fresh == {}


def test_a_write_refused_by_the_folders_mode_names_the_file_asked_for(tmp_path):
    """`atomic_path` writes a temporary beside the file first: a folder one may not write into was named through
    that temporary name (".fit.12364.tmp.json: permission denied"), not the file the user asked for."""
    import subprocess
    import sys

    from tests.conftest import as_reader

    folder = tmp_path / "theirs"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        done = subprocess.run([*as_reader(), sys.executable, "-c", "import sys; from simslm import jobs; "
                               "jobs.write_text(sys.argv[1], 'x')", str(folder / "fit.json")],
                              capture_output=True, text=True, timeout=120)
    finally:
        folder.chmod(0o755)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert f"'{folder / 'fit.json'}'" in last and "PermissionError" in last and ".tmp" not in last


def test_slurm_jobs_are_not_run_here_unless_asked_where_there_is_no_slurm(tmp_path, monkeypatch):
    """With no sbatch on the PATH (a login node without its SLURM module), `--executor slurm` ran every job on
    this machine through submitit's local cluster, its SLURM options unused, without a word."""
    import submitit

    monkeypatch.setattr(submitit.AutoExecutor, "which", staticmethod(lambda: "local"))
    with pytest.raises(ValueError, match=r"--executor slurm: no SLURM here \(sbatch is not on PATH\); run where "
                                         r"sbatch is, or pass --cluster local"):
        jobs.submitit_executor(tmp_path / "jobs", None, timeout_min=60)
    assert not (tmp_path / "jobs").exists()
    assert isinstance(jobs.submitit_executor(tmp_path / "jobs", "local", timeout_min=60), submitit.LocalExecutor)


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


def test_a_slurm_job_that_ended_without_a_result_is_a_failure_where_slurm_keeps_no_accounting(tmp_path,
                                                                                                monkeypatch):
    # submitit waits for a job until its result file appears or sacct says it ended; where sacct fails (a cluster
    # without accounting) every state is UNKNOWN, and a job killed without a result was waited for forever
    # (`sweep run --executor slurm`, `units extract`'s SLURM array). SLURM's queue says it is gone. `sacct` and
    # `squeue` are scripts on PATH here, as SLURM's commands are on a login node.
    import threading

    import cloudpickle
    import submitit

    # 1001 was killed and is gone; 1002, a job of two tasks (a run of two processes), runs, and each task writes
    # its result later.
    slurm_without_accounting(tmp_path, monkeypatch, "1002|RUNNING\n")
    monkeypatch.setattr(jobs.SlurmQueue, "REFRESH_SEC", 0.0)
    monkeypatch.setattr(jobs, "JOB_POLL_SEC", 0.05)
    folder = tmp_path / "jobs"
    folder.mkdir()
    killed, running = submitit.SlurmJob(folder, "1001"), submitit.SlurmJob(folder, "1002", tasks=(0, 1))
    outcome = []
    waiter = threading.Thread(target=lambda: outcome.append(jobs.job_failures(
        [("killed", killed), ("running", running)], "jobs")), daemon=True)
    waiter.start()
    for task in (0, 1):
        time.sleep(0.5)
        assert waiter.is_alive()  # 1002 is still in the queue, and a task's result still to come: waited for
        with open(running.task(task).paths.result_pickle, "wb") as handle:
            cloudpickle.dump(("success", 40 + task), handle)
    waiter.join(timeout=60)
    assert not waiter.is_alive(), "still waiting for a job that has ended"
    assert outcome == [[f"killed (it ended without a result; log {killed.paths.stderr})"]]
    assert running.results() == [40, 41]


def test_a_cuda_device_past_the_ones_torch_sees_is_said_before_any_work(monkeypatch):
    """`--device cuda:3` on a machine of one GPU reached torch's "invalid device ordinal" once a model was moved."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert jobs.torch_device("cuda:1") == "cuda:1"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert jobs.torch_device("cuda") == "cuda:1"
    with pytest.raises(ValueError, match=r"--device cuda:2: torch sees 2 CUDA device\(s\) here"):
        jobs.torch_device("cuda:2")
