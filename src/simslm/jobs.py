"""Batch-job plumbing shared by the stages: a resumable journal and a parallel map with progress."""

from __future__ import annotations

import codecs
import collections
import contextlib
import errno
import functools
import itertools
import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, MutableMapping

from tqdm import tqdm


class Stopped(BaseException):
    """A long job that stopped on request (SIGTERM) at a point it resumes from; the message says so. Not an
    `Exception`, as KeyboardInterrupt is not: the handlers that let a corpus-sized job go on past one bad item (or
    training past a failed compile) must not swallow a request to stop."""


# A SIGTERM this soon after the first is the same request arriving twice: a scheduler signals every process of a
# job (SLURM at a time limit, `timeout`, `kill -- -PGID`), and the sweep, torchrun or a pool that started a process
# forwards the signal to it as well. A later one insists, and ends the process at once.
SIGTERM_REPEAT_S = 5.0
_first_sigterm: list[float] = []


def first_sigterm() -> bool:
    """Notes a SIGTERM (from a handler): True for the first, False for the same request arriving again within
    `SIGTERM_REPEAT_S`; one after that ends this process at once, as the signal's default action does."""
    now = time.monotonic()
    if not _first_sigterm:
        _first_sigterm.append(now)
        return True
    if now - _first_sigterm[0] <= SIGTERM_REPEAT_S:
        return False
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
    return False


def stop_on_sigterm(signum: int, frame: Any) -> None:
    """The `simslm` command's SIGTERM handler: the signal ends the command as Ctrl-C does, through its `finally`
    blocks (a sweep stops the runs it started, a pool its workers, each saving what it has), where the default
    action would end this process alone and leave its children running on. The request arriving again does not
    break into that clean-up (`first_sigterm`). Training replaces this handler, inside its loop, with a stop at the
    end of the step in hand (`train.distributed._StopRequest`)."""
    if first_sigterm():
        raise Stopped("stopped by SIGTERM; run the same command again to resume")


class Journal:
    """Append-only JSONL of finished items, keyed by "id", that survives being killed.

    Each line is flushed and fsynced as it is written; a torn last line (a kill during the
    write) is ignored on reading, so the item is simply done again.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]]:
        """The items recorded so far, by id (a later line for the same id wins)."""
        items: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return items
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn write from an interrupted run
                if isinstance(record, dict) and "id" in record:
                    items[record["id"]] = record
        return items

    def append(self, record: dict[str, Any]) -> None:
        """Record one finished item durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with naming_a_full_disk(self.path), open(self.path, "a", encoding="utf-8") as handle:
            # A torn line from a killed run must not swallow this one.
            if handle.tell() > 0 and not self._ends_with_newline():
                handle.write("\n")
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"


# Seconds between the plain progress lines written when stderr is not a terminal (a SLURM log, a pipe).
LOG_EVERY_SEC_VARIABLE = "SIMSLM_LOG_EVERY_SEC"
DEFAULT_LOG_EVERY_SEC = 30.0
FINAL_LINE_AFTER_SEC = 5.0  # shorter jobs end without a line: a log of many small scorings stays readable


class Progress:
    """Progress of a long job on stderr: a tqdm bar on a terminal; elsewhere (a cluster log, a pipe, CI) one
    plain line every SIMSLM_LOG_EVERY_SEC seconds (30 by default) and one at the end of a job that took a few
    seconds or more, with the rate, the ETA and whatever the job `note`s (a training step's loss, lr and
    tokens/s)."""

    def __init__(self, total: int | None, description: str, unit: str = "item"):
        self.total, self.description, self.unit = total, description, unit
        self.done, self.fields, self.last_count = 0, {}, 0
        self.started = self.last_line = time.perf_counter()
        self.every_sec = float(os.environ.get(LOG_EVERY_SEC_VARIABLE, DEFAULT_LOG_EVERY_SEC))
        self.bar = tqdm(total=total, desc=description, unit=unit, file=sys.stderr,
                        dynamic_ncols=True) if sys.stderr.isatty() else None

    def note(self, **fields: Any) -> None:
        """Values shown with the next line (or beside the bar)."""
        self.fields = fields
        if self.bar is not None:
            self.bar.set_postfix(fields, refresh=False)

    def update(self, count: int = 1) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif time.perf_counter() - self.last_line >= self.every_sec:
            self._line()

    def grow(self, count: int) -> None:
        """`count` more items to do than first said (a sweep's grid grown while it runs)."""
        if count and self.total is not None:
            self.total += count
            if self.bar is not None:
                self.bar.total = self.total
                self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.done != self.last_count and \
                time.perf_counter() - self.started >= min(self.every_sec, FINAL_LINE_AFTER_SEC):
            self._line()
        self.last_count = self.done  # closing twice writes one final line

    def _line(self) -> None:
        self.last_line = now = time.perf_counter()
        self.last_count = self.done
        rate = self.done / max(now - self.started, 1e-9)
        parts = [f"[{self.description}] {self.done}" + (f"/{self.total} ({100 * self.done / self.total:.0f}%)"
                                                         if self.total else ""), f"{rate:.3g} {self.unit}/s"]
        if self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        parts += [f"{key} {_short(value)}" for key, value in self.fields.items()]
        print(", ".join(parts), file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def progress(items: Iterable[Any], description: str, total: int | None = None, unit: str = "item"
             ) -> Iterator[Any]:
    """Iterate over `items`, reporting progress (see `Progress`); `progress.note(...)` is reachable as the
    iterator's `.progress`."""
    return _Tracked(items, Progress(total if total is not None else _length(items), description, unit))


class _Tracked:
    def __init__(self, items: Iterable[Any], tracker: Progress):
        self.items, self.progress = items, tracker

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.items:
                yield item
                self.progress.update()
        finally:
            self.progress.close()

    def close(self) -> None:
        self.progress.close()


def _length(items: Iterable[Any]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def parallel_map(function: Callable[[Any], Any], tasks: Iterable[Any], *, num_workers: int,
                 total: int | None = None, description: str = "",
                 journal: TaskJournal | None = None) -> Iterator[Any]:
    """Yield `function(task)` for every task, in completion order, reporting progress (`Progress`).

    `num_workers` > 1 uses that many worker processes (spawned, so C libraries such as
    espeak-ng start clean in each); 1 runs in this process, which is easiest to debug. With a `journal`, a task
    that ended the process running it in earlier runs is named, and skipped after `DEATHS_TO_SKIP` (`TaskJournal`).
    """
    tracker = Progress(total, description)
    watch = _Watch(journal, description) if journal is not None else None
    finished = False
    try:
        if num_workers <= 1:
            for task in tasks:
                if watch is not None:
                    skipped = watch.skipped(task)
                    if skipped is not None:
                        yield skipped[0]
                        tracker.update()
                        continue
                    watch.note_running(task)
                yield function(task)
                tracker.update()
            finished = True
            return
        if watch is None:
            results = _in_processes(function, tasks, num_workers, description)
        else:
            results = _in_processes(functools.partial(_run_noted, function, str(watch.path)), watch.to_run(tasks),
                                    num_workers, description)
        try:
            for result in results:
                yield result
                tracker.update()
                while watch is not None and watch.skips:
                    yield watch.skips.popleft()
                    tracker.update()
        except WorkerDied as error:
            if watch is None:
                raise
            raise WorkerDied(description, error.ended, watch.note_deaths(error.ended),
                             then=f"a task that ends the process running it {DEATHS_TO_SKIP} times is skipped and "
                                  f"counted") from None
        while watch is not None and watch.skips:
            yield watch.skips.popleft()
            tracker.update()
        finished = True
    finally:
        if watch is not None:
            watch.close(finished)
        tracker.close()


def _in_processes(function: Callable[[Any], Any], tasks: Iterable[Any], num_workers: int,
                  description: str) -> Iterator[Any]:
    """`function(task)` in `num_workers` spawned processes, in completion order.

    Not `multiprocessing.Pool`: when one of its workers dies (killed for memory, a crash inside espeak-ng or
    another native library) it starts a new one and waits forever for the task lost with the old. A process
    pool executor fails every pending task instead, which ends the command with one line.
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    remaining = iter(tasks)
    executor = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"))
    running: set[Any] = set()
    finished = False
    try:
        while True:
            # Two tasks per worker in flight keep each one fed, without a future for every file of a corpus.
            submitted = [executor.submit(function, task)
                         for task in itertools.islice(remaining, 2 * num_workers - len(running))]
            if submitted:
                # Python 3.11's executor wakes its manager thread before it starts the process a submit needs, so
                # the manager may wait without watching that process: one killed (SIGKILL, the OOM killer) went
                # unseen until another worker's result arrived, a whole shard later. Woken again, it watches all.
                wakeup = getattr(executor, "_executor_manager_thread_wakeup", None)
                if wakeup is not None:
                    # Under the lock submit itself holds to wake it: the manager thread closes that pipe under it
                    # once a worker has died, and a wake-up between its check and its write raised "OSError:
                    # [Errno 9] Bad file descriptor" in place of the dead worker's one line (seen once, in a CI run).
                    with getattr(executor, "_shutdown_lock", None) or contextlib.nullcontext():
                        wakeup.wakeup()
            running.update(submitted)
            if not running:
                finished = True
                return
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    except BrokenProcessPool:
        raise WorkerDied(description, _ended_workers(executor)) from None
    finally:
        if finished:
            executor.shutdown()
        else:
            _stop_now(executor)


# Deaths of the process running a task after which the task is skipped: the first may have been anything (a node
# lost, a kill -9, the memory of the tasks beside it); a second on the same task is the task's.
DEATHS_TO_SKIP = 2
ENDED_THE_PROCESS = "ended the process running it"


@dataclass(frozen=True)
class TaskJournal:
    """Where `parallel_map` notes the task each process is running (`path`, JSON lines in the job's output folder),
    so that a task that ends the process running it does not end every run of a resumable job at the same task:
    the kernel's OOM killer under a cgroup's memory limit (a SLURM job's memory, a recording of an hour), a crash
    in a native library (espeak-ng, pocketsphinx), where no Python error is raised. The next run names the task
    and runs it again; one that has ended its process `DEATHS_TO_SKIP` times is skipped and `skipped(task,
    ENDED_THE_PROCESS)` stands for its result. A task that runs to its end is cleared of earlier deaths.

    Each process begins an attempt with a line naming it, then a line per task before running it. A worker's
    attempt died when the parent saw the pool break and found that worker ended by itself (it notes so); an
    attempt in the command's own process died when it has no last word (`stopped`, written by any Python exit).
    A parent killed with its workers marks nothing: then nothing is held against a task. Once every task has run,
    the journal keeps only the deaths of tasks skipped or not in this run (removed when there are none), so its
    size is one run's tasks at most. Unit extraction keeps its own (`units.journal._ShardJournal`): a worker there
    reads and encodes groups of utterances. (A codebook fit, one utterance a task, uses this one.)"""

    path: Path
    key: Callable[[Any], str]  # a task's name across runs: an utterance's or a line's id
    skipped: Callable[[Any, str], Any]  # the result standing for a skipped task, given the reason


class _Watch:
    """A `TaskJournal` in use by one `parallel_map`: the deaths earlier runs left, read once, and the skips."""

    def __init__(self, journal: TaskJournal, description: str):
        self.path, self.key, self._skipped = Path(journal.path), journal.key, journal.skipped
        self.command = f"simslm {description.split(' (')[0]}" if description else "simslm"
        self.deaths, attempts = _earlier_deaths(self.path)
        # What an earlier run left is replaced by its count of deaths: the lines after it are this run's. (Left as
        # it is when that is all it holds: one may resume a finished job in a folder one may not write.)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if attempts:
            _write_deaths(self.path, self.deaths)
        self.skips: collections.deque[Any] = collections.deque()
        self.ran = False  # a task was run, so this run's lines follow

    def skipped(self, task: Any) -> tuple[Any] | None:
        """(the result standing for `task`,) when it is skipped; a warning when it has ended a process before."""
        key = self.key(task)
        times = self.deaths.get(key, 0)
        if not times:
            return None
        if times >= DEATHS_TO_SKIP:
            print(f"{self.command}: warning: skipping {key}: it ended the process running it in {times} earlier "
                  f"runs (out of memory or a crash, most likely); to try it again (given more memory), remove "
                  f"{self.path}", file=sys.stderr)
            return (self._skipped(task, ENDED_THE_PROCESS),)
        print(f"{self.command}: warning: an earlier run's process ended while running {key}; running it again "
              f"(skipped once it has ended a process {DEATHS_TO_SKIP} times)", file=sys.stderr)
        # Run to its end, it is cleared. (Written at the start, its count is in the journal: a run that does not
        # finish leaves it there, and a death in this run adds one to it.)
        self.deaths.pop(key)
        return None

    def to_run(self, tasks: Iterable[Any]) -> Iterator[tuple[str, Any]]:
        """(key, task) of the tasks to run; the results of those skipped wait in `skips`."""
        for task in tasks:
            skipped = self.skipped(task)
            if skipped is None:
                self.ran = True
                yield self.key(task), task
            else:
                self.skips.append(skipped[0])

    def note_deaths(self, ended: dict[int, int]) -> list[str]:
        """Marks the attempts of the workers in `ended` (pid: exit code) as deaths; the tasks they were running."""
        import socket

        host, running = socket.gethostname(), []
        for attempt in _attempts(self.path).values():
            code = ended.get(attempt["pid"])
            if code is None or attempt["host"] != host or attempt["died"] or attempt["last"] is None:
                continue
            with open(self.path, "a", encoding="utf-8") as handle:
                # After a newline of its own: a worker killed mid-line (the dead one, or one the pool's break ended)
                # leaves a torn line, which would swallow this one (a blank line is skipped on reading).
                handle.write("\n" + json.dumps({"attempt": attempt["id"], "died": code}) + "\n")
            running.append(attempt["last"])
        return running

    def note_running(self, task: Any) -> None:
        """In this process: the task it runs now."""
        self.ran = True
        _note_running(self.path, self.key(task), in_process=True)

    def close(self, finished: bool) -> None:
        handle = _running_handles.pop(str(self.path), None)
        if handle is not None:  # this process's own attempt
            if not finished:
                handle[0].write(json.dumps({"attempt": handle[1], "stopped": True}) + "\n")
            handle[0].close()
        if finished and self.ran:
            # Every task ran: those run again are cleared, those skipped (or not in this run) keep their deaths.
            _write_deaths(self.path, self.deaths)


def _earlier_deaths(path: Path) -> tuple[dict[str, int], int]:
    """Times each task has ended the process running it, by its key, from a `TaskJournal`; and how many attempts
    it holds beside the counts it carries."""
    deaths: dict[str, int] = {}
    attempts = _attempts(path, deaths)
    for attempt in attempts.values():
        if attempt["last"] is not None and (attempt["died"] or (attempt["in_process"] and not attempt["stopped"])):
            deaths[attempt["last"]] = deaths.get(attempt["last"], 0) + 1
    return deaths, len(attempts)


def _attempts(path: Path, deaths: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """The attempts of a `TaskJournal`, by id, each with its last task; the counts it carries go into `deaths`. A
    task an attempt went on from (ran to its end) is cleared from `deaths`."""
    attempts: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return attempts
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill
            if not isinstance(entry, dict):
                continue
            if isinstance(entry.get("carried"), str) and isinstance(entry.get("times"), int):
                if deaths is not None:
                    deaths[entry["carried"]] = entry["times"]
            elif isinstance(entry.get("attempt"), dict):
                header = entry["attempt"]
                attempts[str(header.get("id"))] = {
                    "id": header.get("id"), "pid": header.get("pid"), "host": header.get("host"),
                    "in_process": bool(header.get("in_process")), "last": None, "died": False, "stopped": False}
            elif str(entry.get("attempt")) in attempts:
                attempt = attempts[str(entry["attempt"])]
                if "running" in entry:
                    if attempt["last"] is not None and deaths is not None:
                        deaths.pop(attempt["last"], None)
                    attempt["last"] = str(entry["running"])
                attempt["died"] |= "died" in entry
                attempt["stopped"] |= "stopped" in entry
    return attempts


def _write_deaths(path: Path, deaths: dict[str, int]) -> None:
    """The journal as the counts of `deaths` alone; none there, no journal."""
    if not deaths:
        path.unlink(missing_ok=True)
        return
    write_text(path, "".join(json.dumps({"carried": key, "times": times}, ensure_ascii=False) + "\n"
                             for key, times in deaths.items()))


# A process's open journal and its attempt's id, by the journal's path: one open per attempt, not one per task.
_running_handles: dict[str, tuple[Any, str]] = {}


def _note_running(path: Path | str, key: str, in_process: bool) -> None:
    """A line saying this process runs the task `key` now, flushed: in the page cache, it outlives the process."""
    import socket
    import uuid

    noted = _running_handles.get(str(path))
    if noted is None:
        noted = _running_handles[str(path)] = (open(path, "a", encoding="utf-8"), uuid.uuid4().hex[:16])
        header = {"id": noted[1], "pid": os.getpid(), "host": socket.gethostname(), "in_process": in_process}
        noted[0].write("\n" + json.dumps({"attempt": header}) + "\n")  # not swallowed by a line torn before it
    noted[0].write(json.dumps({"attempt": noted[1], "running": key}, ensure_ascii=False) + "\n")
    noted[0].flush()


def _run_noted(function: Callable[[Any], Any], path: str, keyed: tuple[str, Any]) -> Any:
    """A pool worker's run of one task, noted in its journal first."""
    key, task = keyed
    _note_running(path, key, in_process=False)
    return function(task)


class UserError(Exception):
    """An error that is not simslm's fault and whose message says what to do (an asset not found, a worker killed
    for memory): `error_line` says it as it is, as a ValueError, without pointing to a traceback."""


class JobsFailed(RuntimeError, UserError):
    """Runs or jobs a command started (a sweep's runs, `units extract`'s array) ended in errors of their own, which
    their logs hold; what was done is kept and the same command redoes only the rest. The command says it in one
    line, naming the folder: its own traceback would show only where it waited."""


class WorkerDied(RuntimeError, UserError):
    """A worker process of `parallel_map` ended without a word (the kernel's OOM killer under a cgroup's memory
    limit, a crash in a native library); `ended` maps the pid of each that did so to its exit code (-9 for
    SIGKILL). The executor then stops the other workers itself (SIGTERM), so those are not in it. `running`: the
    tasks those workers were running, where a journal says, and `then` what a run after it does with them. A
    user's data or memory, not a fault of simslm's: the command says it in one line."""

    def __init__(self, description: str, ended: dict[int, int], running: Iterable[str] = (), *,
                 doing: str = "running", then: str = ""):
        self.description, self.ended, self.running = description, ended, list(running)
        how = ", ".join(sorted({_how_it_ended(code) for code in ended.values()}))
        said = f"{description or 'a parallel job'}: a worker process ended abruptly (" + (
            how or "out of memory, or a crash in a native library") + ")"
        # A worker that exits with a status, not a signal, ended itself: memory has nothing to do with it.
        by_itself = bool(ended) and all(code > 0 for code in ended.values())
        if self.running:
            said += f" while {doing} {'; '.join(self.running)}; " + \
                ("re-run" if by_itself else "re-run (with fewer workers if memory is short)")
            said += f": {then}" if then else ""
        else:
            said += "; re-run" if by_itself else "; re-run, with fewer workers if memory is short"
        super().__init__(said)


def _how_it_ended(exit_code: int) -> str:
    if exit_code == -signal.SIGKILL:
        return "killed by SIGKILL: out of memory, most likely"
    if exit_code < 0:
        return f"killed by {signal.Signals(-exit_code).name}"
    # It exited by itself: a native library's exit(), or an error as it started, whose traceback is on stderr above.
    # The usual one is multiprocessing's, when a script starts workers from its top level outside
    # `if __name__ == "__main__":` (each spawned worker imports the script again and does the same).
    return (f"exit status {exit_code}, by itself: any traceback is above; a script that starts simslm's workers "
            f"needs `if __name__ == \"__main__\":`")


def proc_shows_this_namespace() -> bool:
    """Whether /proc lists this process's own PID namespace, so that /proc/<pid> is the process `os.kill(pid)`
    reaches. In a PID namespace given its parent's /proc (a sandbox that bind-mounts it, `unshare --pid` without
    `--mount-proc`) /proc/<pid> is some other process, a kernel thread often; on macOS there is no /proc."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def _ended_workers(executor: Any) -> dict[int, int]:
    """The workers of a broken process pool executor that ended by themselves: all but those it terminated after
    (SIGTERM). Read from its private process table (no public one), waiting a moment for the exit codes."""
    ended = {}
    deadline = time.monotonic() + 5
    for pid, process in dict(getattr(executor, "_processes", None) or {}).items():
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        # The executor's manager thread reaps its workers too: the wait that loses that race reads no exit code
        # (ECHILD), and the code appears once the other has it.
        while process.exitcode is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if process.exitcode not in (None, 0, -signal.SIGTERM):
            ended[pid] = process.exitcode
    return ended


def _stop_now(executor: Any) -> None:
    """Ends a process pool executor's workers at once, as `Pool.terminate` did. On an interrupt, or when the caller
    stops reading, a worker would otherwise go on to the task queued for it and run it to its end (a shard of
    unit extraction can take minutes), and the interpreter would wait for it before exiting."""
    terminate = getattr(executor, "terminate_workers", None)  # Python 3.14
    if terminate is not None:
        terminate()
        return
    processes = list((getattr(executor, "_processes", None) or {}).values())  # earlier Pythons: no public way
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    # Its manager thread, seeing the workers gone, closes the pool's wake-up pipe; at the same moment Python's own
    # exit handler may write to it ("Exception ignored ... Bad file descriptor" after a SIGTERM, 1 stop in 6 with
    # `synth`). Waiting for that thread here leaves the exit handler a pipe already marked closed.
    manager = getattr(executor, "_executor_manager_thread", None)
    if manager is not None:
        manager.join(timeout=30)


# Times a job that reaches its time limit is requeued (submitit's own default is 3): a run of the paper's
# largest sizes can outlast a cluster's limit many times over, and each requeue resumes where the last left off.
MAX_REQUEUES = 10
# How long before the time limit the job is warned (submitit's SLURM default): time to finish the step in hand
# and save a checkpoint.
WARNING_S = 90


def submitit_executor(folder: str | os.PathLike, cluster: str | None, *, timeout_min: float, gpus_per_node: int = 0,
                      nodes: int = 1, tasks_per_node: int = 1, cpus_per_task: int = 0, mem_gb: float = 0,
                      max_requeues: int = MAX_REQUEUES, warning_s: int = WARNING_S, **slurm_only: Any):
    """A submitit executor (SLURM, or `cluster="local"` to run the same jobs here). Zero CPUs or memory leave
    the cluster's default; `slurm_only` options (slurm_partition, ...) apply on SLURM, when set.

    A job is warned `warning_s` before its time limit; one whose function is `Resumable` is then requeued, up to
    `max_requeues` times. The local cluster is submitit's LocalExecutor itself, which (unlike AutoExecutor's
    view of it) takes a time limit in fractions of a minute and the warning's delay, so tests can reach both."""
    import submitit

    if cluster is None:
        cluster = submitit.AutoExecutor.which()
        if cluster == "local":
            # No sbatch here (a login node without its SLURM module, say): submitit would run every job on this
            # machine, its SLURM options unused. Meant only when asked for.
            raise ValueError("--executor slurm: no SLURM here (sbatch is not on PATH); run where sbatch is, or pass "
                             "--cluster local to run the jobs on this machine through submitit")
    parameters: dict[str, Any] = {"timeout_min": timeout_min, "gpus_per_node": gpus_per_node, "nodes": nodes,
                                  "tasks_per_node": tasks_per_node}
    if cluster == "local":
        executor = submitit.LocalExecutor(folder=str(folder), max_num_timeout=max_requeues)
        executor.update_parameters(**parameters, signal_delay_s=warning_s)
        return executor
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster, slurm_max_num_timeout=max_requeues)
    parameters.update({key: value for key, value in (("cpus_per_task", cpus_per_task), ("mem_gb", mem_gb)) if value})
    if cluster == "slurm":
        parameters.update({key: value for key, value in slurm_only.items() if value}, slurm_signal_delay_s=warning_s)
        if nodes * tasks_per_node > 1:
            # One task that dies ends the job's others at once. By default srun lets them run on, and they wait
            # in their next collective until torch's process-group timeout (minutes of every GPU of the job).
            parameters["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
    executor.update_parameters(**parameters)
    return executor


class Resumable:
    """A job function that picks up from what an earlier call left on disk (a run's checkpoints, the shards
    already written): when the job's time runs out, submitit calls `checkpoint`, and the job is requeued to
    call it again with the same arguments, instead of ending as failed.

    The contract of submitit's `helpers.Checkpointable`, written out rather than subclassed: submitit is an
    optional extra (`slurm`), and this module is imported by every command."""

    def __init__(self, function: Callable[..., Any]):
        self.function = function

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)

    def checkpoint(self, *args: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args)


def error_line(name: str, error: Exception) -> str:
    """`NAME: error: FILE: what is wrong`, the one line a command ends with on an error: a user's mistake (a
    ValueError, a missing or unreadable file, ...) as it is, anything else with its class and the way to its
    traceback (`--debug`). The command line says it, and a cluster's job of a sweep writes it where a local
    run's line goes (`execute.execute_cluster_run`)."""
    expected = isinstance(error, (ValueError, UserError)) or (
        isinstance(error, OSError) and error.filename)
    message = " ".join(str(error).split()) or error.__class__.__name__
    if isinstance(error, OSError) and error.filename:  # FILE: what is wrong, as every other message
        filename = error.filename
        if isinstance(error, NotADirectoryError):  # OUT/shards under an OUT that is a file: name OUT
            filename = next((str(p) for p in Path(filename).parents if p.is_file()), filename)
        what = ("no such file or folder" if isinstance(error, FileNotFoundError) else
                # simslm makes its folders with exist_ok: what exists there is a file
                "a file, where a folder is needed" if isinstance(error, (FileExistsError, NotADirectoryError))
                else (error.strerror or error.__class__.__name__).lower())
        message = f"{filename}: {what}"
    hint = "" if expected else f" ({error.__class__.__name__}; re-run with --debug for the traceback)"
    return f"{name}: error: {message}{hint}"


# States of a job that has ended, as squeue may still show it for a few minutes (SLURM's MinJobAge); any other state
# (PENDING, RUNNING, COMPLETING, PREEMPTED before a requeue, one added later) is taken for a job still there.
SQUEUE_ENDED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                          "REVOKED", "SPECIAL_EXIT", "TIMEOUT"})


class SlurmQueue:
    """SLURM's queue (squeue) of the jobs `expected` names (a sweep's ledger, a batch of submitted jobs): each one's
    state, asked of all of them in one call at most every few seconds; None where squeue does not answer (not a
    SLURM host)."""

    REFRESH_SEC = 5.0

    def __init__(self) -> None:
        self.expected: set[str] = set()
        self._asked: tuple[float, frozenset[str], dict[str, str] | None] | None = None

    def states(self) -> dict[str, str] | None:
        ids = frozenset(job_id.split("_")[0] for job_id in self.expected)
        if self._asked and self._asked[1] >= ids and time.monotonic() - self._asked[0] < self.REFRESH_SEC:
            return self._asked[2]
        try:  # array tasks one a line (--array), as the ledger names them: 4242_0
            listing = subprocess.run(["squeue", "--noheader", "--array", "--format", "%i|%T", "--jobs",
                                      ",".join(sorted(ids))], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            states = None
        else:
            # A single id the controller has forgotten is an error of its own ("Invalid job id specified", exit 1;
            # with two or more ids the others are listed: MatterMiners/tardis#326): that job is not in the queue.
            states = (dict(line.split("|", 1) for line in listing.stdout.splitlines() if "|" in line)
                      if listing.returncode == 0 else {} if "Invalid job id" in listing.stderr else None)
        self._asked = (time.monotonic(), ids, states)
        return states


SLURM_QUEUE = SlurmQueue()


def watch_slurm_jobs(job_ids: list[str]) -> None:
    """Makes SLURM jobs known to submitit's watcher and to `SLURM_QUEUE` all at once, before the first question
    about any: the watcher then asks sacct of them all in one call, and again at most every 2 s to 10 minutes. Each
    job new to it forces a call of its own, so asked one by one, N jobs made N calls."""
    if job_ids:
        import submitit

        for job_id in job_ids:
            submitit.SlurmJob.watcher.register_job(job_id)
        SLURM_QUEUE.expected.update(job_ids)


def slurm_job_ended(job_id: str) -> bool:
    """Whether SLURM job `job_id` has ended, as far as SLURM says: its accounting (sacct, through submitit's
    watcher: `watch_slurm_jobs`) in a final state, or, knowing nothing of it, its queue (squeue) without it or with
    it in a final state. Not a `SlurmJob` made for the question: making one registers its job anew with the
    watcher, which forces a call of sacct each time."""
    import submitit

    if submitit.SlurmJob.watcher.is_done(job_id):
        return True
    if submitit.SlurmJob.watcher.get_state(job_id, mode="cache") != "UNKNOWN":
        return False
    # Not in SLURM's accounting: a job just submitted may not be there yet, and where accounting is off (some
    # clusters run without it) no job ever is, and submitit takes UNKNOWN for a job not done: one that died without
    # a result was waited for forever. The controller's queue says whether it is still there.
    SLURM_QUEUE.expected.add(job_id)
    queue = SLURM_QUEUE.states()
    if queue is None:  # no squeue here either (a copy of a sweep off the cluster): nothing to go by
        return False
    return job_id not in queue or queue[job_id] in SQUEUE_ENDED


# How often a wait for cluster jobs looks at their result files (submitit's own wait: every second).
JOB_POLL_SEC = 1.0


def job_failures(labelled_jobs: list[tuple[str, Any]], description: str) -> list[str]:
    """Wait for submitit jobs; `label (error; log FILE)` for each that failed (the others still run to the end).
    A SLURM job is waited for until it has written its result or SLURM says it has ended (`slurm_job_ended`):
    submitit's own wait asks sacct alone, and where that knows nothing of a job it waits forever."""
    import submitit

    failures = []
    watch_slurm_jobs([job.job_id for _, job in labelled_jobs if isinstance(job, submitit.SlurmJob)])
    for label, job in progress(labelled_jobs, description, unit="job"):
        if isinstance(job, submitit.SlurmJob):
            # Each task writes its own result (a run of several processes is a job of several tasks).
            results = [job.task(task).paths.result_pickle for task in range(job.num_tasks)]
            while not all(result.exists() for result in results) and not slurm_job_ended(job.job_id):
                time.sleep(JOB_POLL_SEC)
            if not all(result.exists() for result in results):  # `results()` would wait on, asking sacct alone
                failures.append(f"{label} (it ended without a result; log {job.paths.stderr})")
                continue
        try:
            # `results()`, one a task: `result()` of a job of several tasks is an AssertionError once they end
            # ("You should use `results()`"), and every run of `--nproc-per-run 2` read failed.
            job.results()
        except Exception as error:  # submitit re-raises the job's own error
            failures.append(f"{label} ({_job_error(error)}; log {job.paths.stderr})")
    return failures


def _job_error(error: Exception) -> str:
    """The job's own exception, `Class: message`, from the traceback submitit's FailedJobError carries as text; its
    class name alone ("FailedJobError", "UncompletedJobError": a job that ended without a result) otherwise."""
    parts = str(error).split("----------------------")  # submitit's frame around the trace
    if error.__class__.__name__ == "FailedJobError" and len(parts) > 2:
        lines = parts[1].strip().splitlines()
        # The exception's first line is the last one not indented (frames and code are), its message runs on
        starts = [i for i, line in enumerate(lines) if line[:1].strip() and not line.startswith("Traceback")]
        if starts:
            return " ".join(" ".join(lines[starts[-1]:]).split())
    return error.__class__.__name__


def default_workers() -> int:
    """Worker processes for CPU-bound batch jobs: one per core this process may use, by its CPU affinity and by its
    container's CPU quota, which affinity does not show (a pod limited to 4 CPUs on a 64-core host sees 64, and 64
    workers each holding HuBERT run it out of memory)."""
    cores = _affinity_cores()
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def _affinity_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_within_quota(environ: MutableMapping[str, str] = os.environ) -> None:
    """OMP_NUM_THREADS set to a container's CPU quota where that is below the cores it sees, unless it is set: torch
    and the BLAS libraries read it when they load, and otherwise start a thread per core of the host, which the
    quota then throttles (PyTorch's CPU performance guide: threads beyond the CPUs given slow a step down)."""
    quota = cgroup_cpu_quota()
    if "OMP_NUM_THREADS" not in environ and quota and math.ceil(quota) < _affinity_cores():
        environ["OMP_NUM_THREADS"] = str(math.ceil(quota))


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota() -> float | None:
    """The CPUs a cgroup's bandwidth limit allows this process (quota / period: cgroup v2's cpu.max, else v1's
    cpu.cfs_quota_us and cpu.cfs_period_us), None without a limit. Read as joblib's loky reads it
    (`_cpu_count_cgroup`), without importing joblib, which costs 0.26 s in each worker that asks."""
    try:
        if (CGROUP_ROOT / "cpu.max").is_file():
            quota, period = (CGROUP_ROOT / "cpu.max").read_text().split()[:2]
        else:
            quota = (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (CGROUP_ROOT / "cpu" / "cpu.cfs_period_us").read_text().strip()
        quota_us, period_us = int(quota), int(period)
    except (OSError, ValueError):  # no such files (no limit, not Linux), "max", or something unexpected
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def share_cores(num_workers: int) -> int:
    """Give each worker process its share of the cores for BLAS and (when loaded) torch; return that share.

    Workers that each start as many threads as there are cores oversubscribe them; torch
    is not imported here just for this, since that alone costs a logmel worker seconds.
    """
    threads = max(1, default_workers() // max(1, num_workers))
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads


# glibc's mallopt parameters (malloc.h) and the values simslm sets: below 32 MiB (the largest mmap threshold
# glibc accepts on 64-bit) a block comes from the heap, and up to 1 GiB of freed heap stays with the process.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 << 20, 1 << 30
_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")
_freed_memory_kept = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next allocation instead of handing it back to the OS.

    By default glibc serves a block over ~128 KiB-32 MiB with a fresh mmap and unmaps it when freed, or trims
    the heap, so each step of a small model on the CPU page-faults its activations, logits and gradients in
    anew: 320-640 faults a step at the demo's sizes, and 13-22% of the step on a 2-core VM (docs/LOG.md,
    2026-12-03). PyTorch's CPU tuning guide gets the same from jemalloc or tcmalloc preloaded; this needs no
    library. A process's memory then stays at its peak until it exits, as it does with those allocators.

    Once per process, on glibc only; left alone when the user set malloc's variables, preloads an allocator or
    sets SIMSLM_KEEP_FREED_MEMORY=0 (a shared host where memory should go back as soon as it is free).
    True when the settings are in force."""
    global _freed_memory_kept
    if _freed_memory_kept:
        return True
    if (not sys.platform.startswith("linux") or any(os.environ.get(name) for name in _MALLOC_SETTINGS)
            or os.environ.get("SIMSLM_KEEP_FREED_MEMORY", "1") == "0"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries: nothing to set
        return False
    _freed_memory_kept = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and
                              mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _freed_memory_kept


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation that failed: CUDA's `torch.OutOfMemoryError`, the CPU allocator's
    RuntimeError ("DefaultCPUAllocator: can't allocate memory", under a memory limit), numpy's MemoryError.
    (Where the kernel's OOM killer ends the process instead, no Python error is raised.)"""
    import torch

    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and ("can't allocate memory" in str(error) or "out of memory" in str(error)))


def release_device_memory(device: Any) -> None:
    """Give back the blocks CUDA's caching allocator keeps after an allocation failed. Call it outside the
    `except` block: until then the traceback's frames hold the tensors that filled the memory."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def launcher_shard(num_shards: int) -> int:
    """The part of `num_shards` that the launcher gives this process: RANK under torchrun, else
    SLURM_ARRAY_TASK_ID in a SLURM array (modulo, so an array numbered from 1 covers every part), else 0."""
    for variable in ("RANK", "SLURM_ARRAY_TASK_ID"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable]) % num_shards
    return 0


def weights_dtype(dtype) -> dict[str, Any]:
    """`from_pretrained`'s keyword for the weights' dtype (a torch dtype, or "auto" for the one they were saved
    in): `dtype` since transformers 4.56, which warns at `torch_dtype` (a line in every run's log); `torch_dtype`
    before it."""
    import transformers

    major_minor = tuple(int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype" if major_minor >= (4, 56) else "torch_dtype": dtype}


def float32_weights() -> dict[str, Any]:
    """`from_pretrained`'s keyword for fp32 weights (`weights_dtype`)."""
    import torch

    return weights_dtype(torch.float32)


def torch_device(name: str) -> str:
    """The torch device a --device option names: auto (CUDA when there is one), cpu, cuda (this process's GPU:
    LOCAL_RANK under torchrun, else the first) or cuda:N; ValueError when CUDA is asked for and absent."""
    if name == "cpu":
        return name
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch sees no CUDA device here")
    if name == "cuda":
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    elif name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        # Said before any work: torch's "invalid device ordinal" came once the model was being moved.
        raise ValueError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s) here")
    return name


def safe_file_name(value: Any) -> str:
    """A file name from a value found in data: nothing but letters, digits, '.', '_' and '-', and a hash of the
    value, so an id such as '/etc/x' or '../../x' names a file inside its folder and two ids never share one."""
    import hashlib
    import re

    text = str(value)
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '-', text).strip('.')[:80]}-{digest}"


# Above this size a file's digest reads samples of it (`content_digest`).
DIGEST_WHOLE_BYTES = 64 * 2 ** 20
DIGEST_SAMPLE_BYTES = 4 * 2 ** 20


def read_tail(path: str | os.PathLike, size: int = 4096) -> str:
    """The last `size` bytes of a file as text (a log or metrics file of millions of lines is not read whole);
    raises OSError as `open` does."""
    with open(path, "rb") as handle:
        handle.seek(max(0, handle.seek(0, os.SEEK_END) - size))
        return handle.read().decode("utf-8", errors="replace")


def content_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's or a folder's contents: each file's name relative to `path`, its size and its bytes, in
    name order. A file above 64 MiB contributes its size and its first, middle and last 4 MiB only: weights trained
    again differ throughout, and reading all of a 7B model's 15 GB would take a minute on every check."""
    import hashlib

    root, digest = Path(path), hashlib.sha256()
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(root) if file != root else file.name}\0{size}\0".encode())
        with open(file, "rb") as handle:
            if size <= DIGEST_WHOLE_BYTES:
                digest.update(handle.read())
                continue
            for offset in (0, (size - DIGEST_SAMPLE_BYTES) // 2, size - DIGEST_SAMPLE_BYTES):
                handle.seek(offset)
                digest.update(handle.read(DIGEST_SAMPLE_BYTES))
    return digest.hexdigest()


# Files a process keeps free for everything else it opens (libraries, logs, sockets) beside what it asks room for.
SPARE_OPEN_FILES = 256


def allow_open_files(count: int, what: str, fix: str) -> None:
    """Make room for `count` more files held open at once: the soft limit (`ulimit -n`, often 1,024 on a cluster's
    nodes) raised as far as the hard one allows; a ValueError saying `what` needs them and how to `fix` it when
    even the hard limit has no room."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc (macOS)
        open_now = 0
    needed = open_now + count + SPARE_OPEN_FILES
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return
    refusal = ValueError(f"{what}: {needed} open files needed, and this process may open {soft} (hard limit "
                         f"{'unlimited' if hard == resource.RLIM_INFINITY else hard}); {fix}, or raise `ulimit -n`")
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise refusal
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (ValueError, OSError):  # a system that caps it lower than its hard limit says (macOS's OPEN_MAX)
        raise refusal from None


def located_path(path: str | os.PathLike) -> Path:
    """`path` made absolute with the links among its folders followed, but not a link that is the file itself.

    A corpus of links into a store (a Hugging Face cache's snapshots into its blobs, git-annex) is then recorded
    by its own names, which carry the stem and extension a layout reads, and goes on pointing into the corpus
    when the corpus moves; the folders' links are followed, so a path relative to another resolved folder leads
    where it should."""
    absolute = Path(path).absolute()
    if absolute.name in ("", ".", ".."):
        return absolute.resolve()
    return absolute.parent.resolve() / absolute.name


def undecodable_name(path: str | os.PathLike) -> bool:
    """Whether a path's bytes are not UTF-8 (a Latin-1 name from an old archive): Python keeps them as lone
    surrogates, which JSON cannot write and soundfile cannot open ("surrogates not allowed")."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def shown_path(path: str | os.PathLike) -> str:
    """A path as it can be printed whatever its bytes: those that are not UTF-8 as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def portable_path(path: str | os.PathLike, folder: str | os.PathLike) -> dict[str, str]:
    """How a file written into `folder` records `path`: relative to `folder`, so both can move together, and
    absolute, so a copy of `folder` alone still finds it (`placed_path` reads it back)."""
    absolute = located_path(path)
    return {"relative": os.path.relpath(absolute, Path(folder).resolve()), "absolute": str(absolute)}


def placed_path(recorded: str | dict[str, str], folder: str | os.PathLike) -> Path:
    """A path recorded by `portable_path` in a file in `folder`: the relative one when it exists, else the
    absolute one. A plain string (what older folders stored) is taken as it is."""
    if isinstance(recorded, str):
        return Path(recorded)
    relative = Path(folder) / recorded["relative"]
    return relative if relative.exists() else Path(recorded["absolute"])


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a ValueError naming the file when it is not UTF-8 JSON (FileNotFoundError as usual)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder, not a JSON file") from None


BINARY_SNIFF_BYTES = 8192


def text_lines(path: str | os.PathLike) -> Iterator[tuple[str | None, str]]:
    """Each line of a text file and its problem (''): a line that is not UTF-8 comes as None with the problem,
    so that a long job can skip and count it, and an error can name its line. (Decoding in text mode fails on
    the block being read, before any of its lines is seen: the line number would be that of the block's first.)
    Line ends are the file's, with \r\n read as \n; a byte-order mark that opens the file (Windows editors and
    Excel write one) is not part of its first line. A file with a NUL byte in its first 8 KiB is refused whole as
    binary (a FLAC or .npy given as a manifest or corpus: some of its "lines" decode, and were read as text)."""
    with open(path, "rb") as handle:
        if (at := handle.read(BINARY_SNIFF_BYTES).find(b"\0")) >= 0:
            raise ValueError(f"{path}: binary data, not UTF-8 text (a NUL byte at byte {at + 1}; UTF-16 text must be "
                             f"converted to UTF-8)")
        handle.seek(0)
        for number, raw in enumerate(handle):
            if number == 0:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield None, f"not UTF-8 text (byte {error.start + 1} of the line)"
                continue
            yield (line[:-2] + "\n" if line.endswith("\r\n") else line), ""


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file without the byte-order mark that may open it; a ValueError naming the file when it is not
    UTF-8 or not a file."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder, not a file") from None


def update_json(path: str | os.PathLike, update: Callable[[Any], Any], default: Callable[[], Any] = dict) -> Any:
    """Read a JSON file (or `default()` when there is none), apply `update` to its value and write what it
    returns atomically, all under an exclusive lock (`.NAME.lock` beside it); returns the value written.

    Processes that merge into one file (two `simslm eval` of one run, each on its own benchmark) each keep what
    the others wrote: read and write unlocked, the later writer would drop the earlier one's entries."""
    import fcntl

    path = Path(path)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        value = update(read_json(path) if path.exists() else default())
        write_json(path, value)
    return value


_HELD_LOCKS: dict[Path, int] = {}


class Busy(ValueError):
    """Another process holds the lock asked for (`exclusive_lock`)."""


def lock_file(handle: Any, busy: str) -> None:
    """Lock an open file exclusively until it is closed, or raise `Busy(busy)` at once when another process holds
    it. Where the file system has no locks (ENOLCK, say, on an NFS mount without a lock daemon), warn and go on
    unlocked: refusing would stop every job there."""
    import errno
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise Busy(busy) from None
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        print(f"simslm: warning: {handle.name}: the file system does not lock files ({error.strerror}); nothing "
              f"stops a second process from writing here at the same time", file=sys.stderr)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created) for the block, or raise `Busy(f"{busy} ({holder})")` at
    once when another process holds it. The holder's host and pid are written into the file.

    Re-entrant within a process: a sweep holds its run folder's lock and then trains the run, which locks it too.
    Where the file system has no locks, the block runs unlocked after a warning (`lock_file`)."""
    import socket

    key = Path(path).resolve()
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key] += 1
        try:
            yield
        finally:
            _HELD_LOCKS[key] -= 1
        return
    key.parent.mkdir(parents=True, exist_ok=True)
    with open(key, "a+") as handle:
        try:
            lock_file(handle, busy)
        except Busy:
            handle.seek(0)
            holder = handle.read().strip()
            raise Busy(f"{busy} ({holder})" if holder else busy) from None
        handle.truncate(0)
        handle.write(f"held by process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        _HELD_LOCKS[key] = 1
        try:
            yield
        finally:
            del _HELD_LOCKS[key]
            handle.truncate(0)  # the file stays (another process may be waiting to open it); its holder does not


@contextlib.contextmanager
def exclusive_lock_waiting(path: str | os.PathLike, waiting: str, poll_sec: float = 1.0) -> Iterator[None]:
    """`exclusive_lock`, waited for while another process holds it (`waiting` said once, on stderr): for work that
    one process does for all (a cache), the others then reading what it made."""
    said = False
    while True:
        held = contextlib.ExitStack()
        try:
            held.enter_context(exclusive_lock(path, waiting))
        except Busy as busy:
            if not said:
                print(f"simslm: {busy}", file=sys.stderr)
                said = True
            time.sleep(poll_sec)
            continue
        with held:
            yield
        return


def keep_settings(path: str | os.PathLike, settings: dict[str, Any], *, made: str, advice: str,
                  earlier_work: bool) -> None:
    """Record in `path` (JSON) the options that decide what a resumable folder holds, or raise ValueError when it
    records other values: a run taking up what was done before would keep it as it is, silently. `made` says how
    the folder was made ("cut", "spoken"), `advice` what to do instead. A folder with `earlier_work` and no record
    (made before simslm kept one) is taken as made with these settings, and a line says so."""
    from simslm.config import flag

    path = Path(path)
    if path.exists():
        recorded = read_json(path)
        if not isinstance(recorded, dict):
            raise ValueError(f"{path}: not a record of settings (a JSON object); remove it, or {advice}")
        changed = [f"{flag(name)} {recorded.get(name)} then, {value} now" for name, value in settings.items()
                   if recorded.get(name) != value]
        if changed:
            raise ValueError(f"{path.parent}: {made} with other settings ({'; '.join(changed)}); {advice}")
    elif earlier_work:
        print(f"simslm: {path.parent}: the settings it was {made} with are not recorded; what it holds is taken as "
              f"{made} with these", file=sys.stderr)
    write_json(path, settings)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically (temporary name, then rename)."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes atomically (temporary name, then rename); a ValueError naming `path` when it is a folder
    (`atomic_path`)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def modes_as_umask_allows(folder: str | os.PathLike) -> None:
    """Give each `.safetensors` file in `folder` the mode its owner's umask gives any new file. safetensors 0.8
    writes through a temporary file of mode 0600 and renames it (its issue #782), so a run's weights were readable
    by their owner only: a colleague on a shared cluster could read a run's config but not evaluate its model."""
    mode = 0o666 & ~_umask()
    for file in Path(folder).rglob("*.safetensors"):
        if (file.stat().st_mode & 0o777) == 0o600 and mode != 0o600:
            file.chmod(mode)


def _umask() -> int:
    """This process's umask: Linux says it in /proc (since 4.7); elsewhere set and put back, the only way."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def naming_a_full_disk(path: str | os.PathLike) -> Iterator[None]:
    """Raises a failure to write `path` that a full disk (a quota, a file size limit) caused as the OSError it is,
    naming `path`.
    torch.save reports a full disk as "[enforce fail at inline_container.cc:672] . unexpected pos 189120 vs 189008",
    safetensors as its own error, a plain write as an OSError without a file name. When the block fails, the disk
    is tried with a write of 1 MiB beside `path` (the failed write's bytes still hold their place)."""
    try:
        yield
    except Exception as error:
        if isinstance(error, OSError) and error.filename:
            raise
        full = _no_space(Path(path).parent)
        if full is None:
            raise
        raise OSError(full, os.strerror(full), str(path)) from error


def _no_space(folder: Path) -> int | None:
    """ENOSPC or EDQUOT when `folder` takes no more bytes, EFBIG when a file there may not reach 1 MiB (a process's
    RLIMIT_FSIZE; FAT32's 4 GiB per file is not seen by so small a probe), else None."""
    import errno

    probe = folder / f".space-probe.{os.getpid()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(bytes(1 << 20))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        return error.errno if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """A temporary path beside `path` to write a file or a folder to; it becomes `path` only if the block succeeds.

    The rename is atomic for a file; a folder already at `path` is moved aside first and
    deleted after, so readers see the old or the new one, never a mix. A folder is never put
    in place of a file (a user's file named as an output folder would be deleted): a ValueError,
    and the commands that replace a folder whole say it before their work (`check_replaceable`).
    With `replace` false (a command that refuses an existing output unless told to replace it), a folder that
    another process filled while this one built is not replaced: a ValueError, and the other's output stays (two
    builds into one new folder each said "built", and the later one's silently replaced the earlier's).
    The temporary name keeps the suffix, for writers that add or check one (numpy, matplotlib,
    soundfile). A full disk is said as such (`naming_a_full_disk`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    _remove(temporary)
    try:
        with naming_a_full_disk(path):
            yield temporary
            if temporary.is_dir():
                if path.exists() and not path.is_dir():
                    raise ValueError(f"{path}: a file, where a folder is needed")
                if replace:
                    replace_folder(temporary, path)
                else:
                    try:  # onto nothing or an empty folder; a filled one refuses the rename (ENOTEMPTY)
                        os.rename(temporary, path)
                    except OSError as error:
                        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                            raise
                        raise ValueError(f"{path}: another process filled it while this one was building; this "
                                         f"build is not kept (pass --overwrite to replace it)") from None
            else:
                os.replace(temporary, path)
    except (PermissionError, IsADirectoryError) as error:
        if error.filename != str(temporary):
            raise
        # The temporary name is this function's own: the file the user asked for is `path`.
        if isinstance(error, IsADirectoryError):  # a file renamed onto a folder
            raise ValueError(f"{path}: a folder, where a file is needed") from None
        raise PermissionError(error.errno, f"cannot write it here ({error.strerror})", str(path)) from None
    finally:
        _remove(temporary)


def check_replaceable(path: str | os.PathLike, mark: str | None, what: str, advice: str) -> None:
    """Before the work of a command that builds a folder whole and puts it in place of `path` (`atomic_path`),
    which deletes what was there: a ValueError when `path` is a file, or a folder holding something other than
    what the command makes (`mark`, a file such a folder has, `what` its name: "a benchmark `simslm bench build`
    made"; no mark: only an empty folder may be replaced); `advice` says what to do instead."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: a file, where a folder is needed; {advice}")
    if path.is_dir() and any(path.iterdir()) and (mark is None or not (path / mark).is_file()):
        raise ValueError(f"{path}: not empty{f', and not {what} (no {mark})' if mark else ''}; {advice}")


def refuse_unwritable(path: str | os.PathLike, advice: str) -> None:
    """Raise ValueError naming `path` when this process may not write the folder it goes into (or the nearest one
    above it that exists): said before the work whose result it would hold (a fit's bootstrap, a report's plots),
    not after. `advice` says where else to write it."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.exists() and not folder.is_dir():  # `report FILE`: not a folder one may not write
        raise ValueError(f"{folder}: a file, where a folder is needed")
    if not may_write(folder):
        raise ValueError(f"{path}: cannot write into {folder} (permission denied); {advice}")


def may_write(folder: str | os.PathLike) -> bool:
    """Whether this process may create files in `folder` (its effective ids and capabilities, as an open would)."""
    return os.access(folder, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)


def replace_folder(staging: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move a complete folder into place, replacing (then deleting) whatever was there."""
    staging, final = Path(staging), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    previous = final.with_name(f".{final.name}.{os.getpid()}.old")
    if final.exists():
        os.replace(final, previous)
    os.replace(staging, final)
    _remove(previous)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
