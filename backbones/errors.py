"""The project's errors: bad input a user can fix, each with a message that says what to do.

`EfficientFormerV2Error` is the base of every such error in every package (checkpoints here,
data folders, export runtimes, configs, command lines); the command-line tools answer it with one
line and exit status 2, and let every other exception (a bug) keep its traceback. A subclass may
also derive from the built-in exception its kind of problem has always been (`ValueError`, ...),
so that `except ValueError` written against the standard library still catches it.

A leaf module: it imports nothing of the project, so every module may import it.
"""
from __future__ import annotations

__all__ = ["EfficientFormerV2Error", "UsageError", "NotFoundError", "FileFormatError", "NetworkError",
           "CheckpointError", "ArchitectureMismatchError", "ClassCountMismatchError"]


class EfficientFormerV2Error(Exception):
    """Bad input the user can fix (a file, a folder, a value, a missing optional package); the
    message says what is wrong and what to do."""


class UsageError(EfficientFormerV2Error, ValueError):
    """A request that cannot be carried out as given (an option, a combination of options, a
    name), found by a tool or a library function before any work; the message says what to pass."""


class NotFoundError(EfficientFormerV2Error, FileNotFoundError):
    """A file or folder the input names is not there; the message says where it was looked for."""


class FileFormatError(EfficientFormerV2Error, ValueError):
    """A file the input names is not of the kind expected (a record, a table, a config, a
    searched network) or cannot be parsed; the message names the file and what it should be."""


class NetworkError(EfficientFormerV2Error, OSError):
    """A service the input needs (the Hugging Face Hub) cannot be reached or refused the request;
    the message says what to do (log in, work offline, pass a local file)."""


class CheckpointError(EfficientFormerV2Error, RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message says what to do."""


class ArchitectureMismatchError(CheckpointError):
    """The checkpoint holds another architecture than the model's. `checkpoint_name` is the
    variant the weights are (`describe_arch`), `model_name` the model's; `checkpoint_arch` the
    architecture read from the weights. Front ends re-word the advice in their own terms."""

    def __init__(self, message: str, checkpoint_name: str, model_name: str, checkpoint_arch: object) -> None:
        super().__init__(message)
        self.checkpoint_name = checkpoint_name
        self.model_name = model_name
        self.checkpoint_arch = checkpoint_arch


class ClassCountMismatchError(CheckpointError):
    """The checkpoint's classifier has another class count (`checkpoint_classes`) than the
    model's (`model_classes`); `load_checkpoint(..., classifier="drop" | "resize")` takes it."""

    def __init__(self, message: str, checkpoint_classes: int, model_classes: int) -> None:
        super().__init__(message)
        self.checkpoint_classes = checkpoint_classes
        self.model_classes = model_classes
