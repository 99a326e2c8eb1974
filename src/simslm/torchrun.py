"""torchrun as `simslm sweep` starts a run of several processes: torch's own launcher (`torch.distributed.run`,
same arguments), whose end on a signal or a failed process is said in one line in the run's log.

Alone, torchrun ends both with a traceback of its own: a SIGTERM (the sweep stopping, a scheduler's time limit)
raises `SignalException` from its signal handler through the elastic agent, after the ranks have stopped at a
checkpoint and said so; a rank's error ends it with `ChildFailedError` and a table, below the rank's own line.
"""

from __future__ import annotations

import sys


def main() -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun()
    except SignalException as stopped:
        name = getattr(stopped.sigval, "name", str(stopped.sigval))
        print(f"torchrun: stopped by {name}; its processes were stopped with it", file=sys.stderr)
        return 128 + int(stopped.sigval)
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        how = failure.signal_name() if failure.exitcode < 0 else f"exit status {failure.exitcode}"
        print(f"torchrun: rank {rank} ended with {how}; its own error is above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
