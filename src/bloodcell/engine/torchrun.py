"""torchrun for `train --devices`: ``torch.distributed.run`` without its failure report.

When a worker fails, torchrun logs the exit code and re-raises it as a traceback with a "FAILED"
summary. A bloodcell worker has already said why in one line (a bad dataset, a stop): here that
one line is all the user sees, and the exit code is the worker's. A worker killed by a signal (out
of memory, a segfault) gets one line that says so.
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
from collections.abc import Sequence

# bloodcell's own exits: each machine's first process printed the error (2) or the stop (130) its others
# share (cli._other_rank), or a process Python's traceback (1)
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
        if failure.exitcode in SAID_BY_THE_WORKER:
            return failure.exitcode  # said by the machine's first process
        if failure.exitcode < 0:
            name = signal.Signals(-failure.exitcode).name
            print(f"error: training process {rank} was killed by {name} (out of memory?)", file=sys.stderr)
            return 128 - failure.exitcode
        print(f"error: training process {rank} exited with code {failure.exitcode}", file=sys.stderr)
        return failure.exitcode
    except SignalException as e:  # a SIGTERM/SIGINT to torchrun: it has stopped its workers
        name = signal.Signals(e.sigval).name
        given = _option(argv, "--out")
        out = shlex.quote(given) if given else "RUN (the run folder named above)"
        print(f"stopped by {name}; `bloodcell train --resume --out {out}` goes on from the last epoch saved",
              file=sys.stderr)  # fmt: skip
        return 128 + int(e.sigval)
    return 0


def _option(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` (``--flag V`` or ``--flag=V``) in ``argv``, the last one given."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"{flag}="):
            value = arg[len(flag) + 1 :]
    return value


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
