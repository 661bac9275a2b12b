"""Errors that the CLI turns into one clear line (and an exit code) instead of a traceback."""

import threading
from collections.abc import Sequence
from pathlib import Path

#: Packages that only an extra installs (`pip install 'bloodcell[EXTRA]'`): a missing one gets that hint
#: from the CLI and the Python API.
EXTRAS = {
    "torch": "torch",
    "torchvision": "torch",
    "timm": "torch",
    "pycocotools": "eval",
    "matplotlib": "eval",
    "pyarrow": "cluster",
    "ray": "cluster",
    "onnx": "export",
    "litert_torch": "export",
    "torchao": "export",
    "fastapi": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "python_multipart": "serve",
    "watchdog": "serve",
}


def first_of(names: Sequence[str], shown: int = 3) -> str:
    """'a, b, c, ...': the first ``shown`` names of a list a message names (a terminal line, not a listing)."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


#: Set by the CLI's Ctrl-C / SIGTERM handler beside the KeyboardInterrupt it raises: Python drops an exception
#: raised inside a garbage-collector callback (jax's, while litert-torch imports), so a stop landing there would
#: be lost and the command would finish, and write, as if it had never been stopped.
_STOP_ASKED = threading.Event()


def ask_to_stop() -> None:
    _STOP_ASKED.set()


def forget_stop() -> None:
    """A new command (the CLI's main called again in one process, as tests do) starts unstopped."""
    _STOP_ASKED.clear()


def check_stop() -> None:
    """KeyboardInterrupt if a stop was asked, even one Python dropped: called before writing a file that a
    stopped command must leave as it was (an export over an earlier one)."""
    if _STOP_ASKED.is_set():
        raise KeyboardInterrupt


class BloodcellError(Exception):
    """Base class: the message alone must tell the user what is wrong and where."""

    exit_code = 2


class DatasetError(BloodcellError):
    """The dataset cannot be read at all (missing folder, missing split file, ...)."""


class OutputError(BloodcellError):
    """An output that could not be written whole (the earlier file of its name is kept)."""


class ImageError(BloodcellError):
    """One image cannot be read or decoded."""

    exit_code = 1


class UnreadableImageError(ImageError):
    """One image cannot be read now (permissions): unlike a bad file, worth trying again later."""


class TruncatedImageError(ImageError):
    """An image whose data ends early: a damaged file, or one still being copied (watch waits a little)."""


class ModelError(BloodcellError):
    """A model file is missing, corrupt, or of an unknown kind."""


class MetadataError(ModelError):
    """An exported model's metadata (sidecar or embedded) is missing, malformed, or not for this model."""


class TrainingError(BloodcellError):
    """Training cannot go on (e.g. the loss became NaN)."""


class StopSaid(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, after the command has said what it kept and how to go on (the CLI adds no
    second "interrupted" line)."""


def is_interrupt(error: BaseException) -> bool:
    """Ctrl-C or SIGTERM, also when it landed inside code that turned it into another error: a C
    extension's import gives "ImportError: initialization failed" caused by the KeyboardInterrupt, and an
    exporter's "export failed" hides it with ``from None`` (still its context: a stop, not a fault)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        todo += [current.__cause__, current.__context__]
    return False


class ConfigError(BloodcellError):
    """Options that make no sense together, or unknown settings."""


def describe_os_error(e: OSError) -> str:
    """One line for a failed read or write: "<file>: <reason>" (the file as the user named it:
    atomic writes re-raise their temporary file's errors under the target's name)."""
    reason = e.strerror or str(e)
    return f"{e.filename}: {reason}" if e.filename else reason


def missing_model(path: Path) -> ModelError:
    """The error for a --model path that is not a file (a folder, or nothing there)."""
    problem = "is a folder, expected a model file" if path.is_dir() else "model file not found"
    if path.suffix.lower() == ".pt" and not path.is_dir():
        from bloodcell.weights import default_model  # weights imports this module

        try:
            shipped = default_model()[0].name
        except ModelError:  # its manifest unreadable: the error at hand is this one
            shipped = None
        if path.name == shipped:  # its name, but given with a folder that does not hold it
            problem += f" (the shipped model, from any folder: --model {shipped})"
    return ModelError(f"{path}: {problem}")
