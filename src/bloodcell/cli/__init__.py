"""The ``bloodcell`` command: parses arguments, builds typed settings, calls one API function.

Every failure the user can fix ends in one line on stderr and a non-zero exit code:
2 for unusable input (dataset, model, options), 1 for "ran, but some items failed".
One module per group of commands (data, model, apps); options.py holds the option types they share.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence

from bloodcell.cli.apps import add_app_commands
from bloodcell.cli.data import add_data_commands
from bloodcell.cli.model import add_model_commands
from bloodcell.errors import (
    EXTRAS,
    BloodcellError,
    ConfigError,
    StopSaid,
    ask_to_stop,
    describe_os_error,
    forget_stop,
    is_interrupt,
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bloodcell",
        description="Detect and count RBC, WBC and platelets in blood-smear images.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)
    add_data_commands(sub)
    add_model_commands(sub)
    add_app_commands(sub)
    return parser


class _CommandParser(argparse.ArgumentParser):
    """A command's parser: an option it does not know is refused with that command's usage (argparse hands
    unknown options up to `bloodcell`'s own parser, whose usage lists the commands, not the options)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = super().parse_known_args(args, namespace)
        if extra and self._subparsers is None:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return namespace, extra


def _version() -> str:
    from bloodcell import __version__

    return f"bloodcell {__version__}"


OWN_STOP = ("serve",)  # commands that keep SIGTERM's default (see main); others stop as on Ctrl-C


def _stops_on_sigterm(args: argparse.Namespace) -> bool:
    if args.command == "train":  # one process stops as on Ctrl-C; torchrun and its launcher stop workers themselves
        return not getattr(args, "devices", None) and "LOCAL_RANK" not in os.environ
    return args.command not in OWN_STOP


def _other_rank() -> bool:
    """A distributed worker other than its machine's first (local rank 0). Every process checks the same
    settings and data, so the first one's error or stop is theirs too: only it says it, once per
    machine (a fault of one machine's data is still said there)."""
    return os.environ.get("LOCAL_RANK", "0") != "0"


def _stop(signum: int, frame: object) -> None:
    ask_to_stop()  # remembered too: where Python drops the exception below, an export still stops before writing
    raise KeyboardInterrupt  # a scheduler's SIGTERM ends a command as Ctrl-C does: finished work is kept


def _threads_note(threads: int | None, workers: int = 1) -> str | None:
    """--threads (per worker, for batch's --workers on this machine) above the cores this process may use:
    honoured, but the runtimes then fight over the cores (16 threads on 2 cores ran the network 5-10x slower)."""
    from bloodcell.runtime.timing import available_cores

    cores = available_cores()
    if workers > 1 and workers * (threads or 1) > cores:
        each = f" x --threads {threads}" if threads else " (a thread each)"
        return f"--workers {workers}{each} is more than the {cores} cores this process may use: slower, not faster"
    if threads is None or threads <= cores:
        return None
    return f"--threads {threads} is more than the {cores} cores this process may use: slower, not faster"


#: Modules a command always imports: checked before it starts, so a lite install says every missing extra at
#: once, before reading data or loading a model (not one per try, after the work began).
COMMAND_NEEDS = {
    "val": ("pycocotools", "matplotlib"),
    "calibrate": ("pycocotools",),
    "batch": ("pyarrow",),
    "data stats": ("matplotlib",),
}
#: Commands whose --model (default: the shipped model) is a .pt file that needs torch to run.
MODEL_COMMANDS = ("predict", "val", "calibrate", "serve", "watch", "batch")


def _importable(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # an import guard's refusal, or a broken install: not usable either
        return False


def _missing_extras_message(args: argparse.Namespace) -> str | None:
    """What the command needs that this install lacks, as one line naming every extra; None: nothing."""
    command = _command_name(args)
    missing = [m for m in COMMAND_NEEDS.get(command, ()) if not _importable(m)]
    if not missing:
        return None  # (a .pt alone without torch: the model loader says that, with the export to use instead)
    model = getattr(args, "model", None)
    if command in MODEL_COMMANDS and (model is None or str(model).lower().endswith(".pt")) and not _importable("torch"):
        missing.append("torch")  # else the next try would stop at the model
    return _install_hint(command, missing, [EXTRAS[m] for m in missing])


def _command_name(args: argparse.Namespace) -> str:
    """The command as typed: `val`, `data stats`."""
    return " ".join(filter(None, (args.command, getattr(args, "data_command", None))))


def _install_hint(command: str, modules: Sequence[str], extras: Sequence[str]) -> str:
    return (
        f"`bloodcell {command}` needs {', '.join(modules)}: pip install 'bloodcell[{','.join(dict.fromkeys(extras))}]'"
    )


def _reader_gone(stream) -> bool:
    """Whether ``stream``'s reader has closed its pipe (not a socket's peer: poll says so of the stream
    itself). If so, the stream is pointed at devnull, as Python's signal docs advise, so that the flush at
    exit does not fail a second time."""
    import select

    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):  # a stream without a descriptor (pytest's capture)
        return False
    if not hasattr(select, "poll"):  # Windows: not known to be this stream's pipe, so said as any other error
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    # a pipe with no reader left: POLLERR on Linux, POLLHUP on macOS
    if not any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
        return False
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return True


def _failed(error: BaseException, args: argparse.Namespace) -> int:
    """The exit code of a command that failed, its reason said on one line; an unexpected error (a bug)
    is raised again with its traceback."""
    if isinstance(error, BloodcellError):
        if not _other_rank():
            print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    # `bloodcell data check --json - | head` (or stderr's reader gone, `2>&1 | head`)
    if isinstance(error, BrokenPipeError) and (_reader_gone(sys.stdout) or _reader_gone(sys.stderr)):
        return 141  # as a Unix tool killed by SIGPIPE: quiet, the reader has what it wanted
    if isinstance(error, OSError):  # unwritable --out, a file where a folder is expected, full disk, ...
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    top = (getattr(error, "name", None) or "").split(".")[0]
    if isinstance(error, ModuleNotFoundError) and top in EXTRAS:
        extra = "export" if args.command in ("export", "qat", "benchmark") else EXTRAS[top]  # torch and the converters
        print(f"error: {_install_hint(_command_name(args), [top], [extra])}", file=sys.stderr)
        return 2
    raise error


#: Options whose empty value the command itself judges: outputs (check_outputs: "the path is empty"), val's
#: `--out ''` (no plots), a report's title.
EMPTY_JUDGED = ("out", "json", "csv", "voc", "title")


def _refuse_empty(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """An empty value (`--model "$M"` with M unset) is refused, never taken as "not given" (the shipped
    model, the current folder, every network interface)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(args, action.dest, None)
            if chosen in action.choices:
                _refuse_empty(action.choices[chosen], args)
            continue
        value = getattr(args, action.dest, None)
        values = value if isinstance(value, list) else [value]
        if action.dest in EMPTY_JUDGED or not any(isinstance(v, str) and not v.strip() for v in values):
            continue
        if action.option_strings:
            flag = action.option_strings[-1]
            leave = "" if action.required else f", or leave {flag} out"  # a required flag cannot be left out
            raise ConfigError(f"{flag}: the value is empty (an unset shell variable?); give one{leave}")
        name = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
        raise ConfigError(f"{name}: an empty argument (an unset shell variable?); name one")


@contextlib.contextmanager
def _decoder_warnings_said() -> Iterator[None]:
    """Pillow's warnings (a corrupt EXIF block) as one `warning:` line per file that names it; Python's own
    form names Pillow's source line instead, once per process. A large image's decompression-bomb notice is
    dropped: bloodcell tiles large fields (larger ones are refused with the limit said)."""
    import warnings

    from PIL import Image

    from bloodcell.runtime.images import decoder_warning

    pillow = f"{os.sep}PIL{os.sep}"
    with warnings.catch_warnings():
        warnings.filterwarnings("always", module=r"PIL\.")
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # (the later filter is first)
        shown, said = warnings.showwarning, set()

        def show(message, category, filename, lineno, file=None, line=None):
            if pillow not in str(filename):
                shown(message, category, filename, lineno, file, line)
            elif (text := decoder_warning(message)) not in said:  # once per file (training reads files again)
                said.add(text)
                print(f"warning: {text}", file=sys.stderr)

        warnings.showwarning = show
        yield


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = get_args_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # the command as given: `train --devices` hands it on to torchrun
    try:
        _refuse_empty(parser, args)
    except ConfigError as e:
        return _failed(e, args)
    if missing := _missing_extras_message(args):
        return _failed(ConfigError(missing), args)  # (said once per machine under torchrun, as every error)
    import signal
    import threading

    # A scheduler's stop ends a command as Ctrl-C does: predict writes the results of the finished images,
    # watch ends between files, batch writes its finished rows and run record, and a file being written is
    # removed, not left as a hidden temporary. Not distributed train (torchrun and its launcher stop workers
    # with SIGTERM themselves), nor serve (uvicorn's own handlers).
    # batch's workers on this machine share its cores (Ray joining a cluster spreads them over its nodes)
    workers = args.workers if args.command == "batch" and not getattr(args, "address", None) else 1
    if note := _threads_note(getattr(args, "threads", None), workers):
        print(f"warning: {note}", file=sys.stderr)
    ours = _stops_on_sigterm(args) and threading.current_thread() is threading.main_thread()
    forget_stop()
    # Ctrl-C too, where Python's own handler is in place (a shell's background job ignores it: it stays so)
    python_own = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    stops = [signal.SIGTERM, *([signal.SIGINT] if python_own else [])]
    previous = {sig: signal.signal(sig, _stop) for sig in stops} if ours else {}
    try:
        with _decoder_warnings_said():
            return int(args.func(args) or 0)
    except BaseException as e:
        if not is_interrupt(e):
            return _failed(e, args)
        # Ctrl-C or SIGTERM, also where it landed inside code that turned it into its own error (a C
        # extension's import, an exporter's "export failed"): a stop, not a fault
        if not _other_rank() and not isinstance(e, StopSaid):  # a command that said how it stopped: once
            print("interrupted", file=sys.stderr)
        return 130
    finally:
        forget_stop()  # a later call in this process (the Python API after an in-process main) is not stopped
        for sig, handler in previous.items():
            signal.signal(sig, handler)
