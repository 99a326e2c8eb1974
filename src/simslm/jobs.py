"""Batch-job plumbing shared by the stages: a resumable journal, a parallel map with progress, SIGTERM.

Also the errors a command ends with in one line (`error_line`). Files are `storage`'s; cluster jobs are
`slurm`'s; the cores, memory and device a process may use are `machine`'s.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tqdm import tqdm

from simslm.storage import naming_a_full_disk, write_text


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
    end of the step in hand (`train.distributed.StopRequest`)."""
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
    size is one run's tasks at most. Unit extraction keeps its own (`units.journal.ShardJournal`): a worker there
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
