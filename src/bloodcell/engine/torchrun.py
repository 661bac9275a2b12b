"""torchrun for `train --devices`: ``torch.distributed.run`` without its failure report.

When a worker fails, torchrun logs the exit code and re-raises it as a traceback with a "FAILED"
summary. A bloodcell worker has already said why in one line (a bad dataset, a stop): here that
one line is all the user sees, and the exit code is the worker's. A worker killed by a signal (out
of memory, a segfault) gets one line that says so.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence

# the workers' own exits: they printed their error (2), their stop (130) or Python's traceback (1)
SAID_BY_THE_WORKER = (1, 2, 130)


def main(argv: Sequence[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in list(logging.root.manager.loggerDict):  # the elastic agent's "failed (exitcode: 2)" lines
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(list(argv)))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode < 0:
            name = signal.Signals(-failure.exitcode).name
            print(f"error: training process {rank} was killed by {name} (out of memory?)", file=sys.stderr)
            return 128 - failure.exitcode
        if failure.exitcode not in SAID_BY_THE_WORKER:
            print(f"error: training process {rank} exited with code {failure.exitcode}", file=sys.stderr)
        return failure.exitcode
    except SignalException as e:  # a SIGTERM/SIGINT to torchrun: it has stopped its workers
        name = signal.Signals(e.sigval).name
        print(
            f"stopped by {name}; `bloodcell train --resume --out RUN` goes on from the last epoch saved",
            file=sys.stderr,
        )
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
