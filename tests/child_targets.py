"""Functions the tests run in spawned child processes. Spawn pickles a function by its module
and name and the child imports that module: this one imports nothing heavy, so a child starts in
the time its own work needs, not the test module's imports."""
import os
from typing import NoReturn


def dies_with_exit_code_3(*args: object) -> NoReturn:
    """Stands in for a measurement: ends the process without a result, as the kernel's
    out-of-memory killer does."""
    os._exit(3)


def raises_memory_error(*args: object) -> NoReturn:
    """Stands in for a measurement that fails with an uncaught error."""
    raise MemoryError("no memory for the activations")


def doubles(x: int) -> int:
    """A result to send back."""
    return 2 * x
