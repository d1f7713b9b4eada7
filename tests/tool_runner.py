"""Run a script of tools/ in this test process, as `python tools/NAME.py ARGS` would run it.

A new Python process spends about 9 s importing torch, timm and the runtimes on this machine;
the bad-input tests of every tool only need the tool's own `__main__` path, its one-line error
and its exit status. `run_tool` executes the script with `runpy` under `__main__` (so
`sys.exit(run(main, prog))` is what runs), with `sys.argv`, the working folder and stdout/stderr
swapped for the call, and returns what `subprocess.run(..., capture_output=True, text=True)`
would. A missing runtime is simulated with `hide=("openvino",)` (an import of it fails as when
the package is not installed). `load_tool` imports a script as a module, for its functions.

Tests that time a runtime (ExecuTorch's threadpool takes one thread count per process) or that
check the interpreter's start still run the tool in a subprocess.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import runpy
import subprocess
import sys
import traceback
from pathlib import Path

import torch
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"


def run_classification(args: list[str], cwd: str | Path | None = None,
                       timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m classification ARGS` in a new process (one thread, tests/ importable, so that
    `--trainer.callbacks+=tool_runner.KillAtStep` works), in `cwd`."""
    paths = [str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "classification", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


class KillAtStep(Callback):
    """Ends the process abruptly (like a kill, exit status 17) when training reaches `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os._exit(17)


def run_tool(name: str, *args, cwd: str | Path | None = None,
             hide: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run `tools/<name>.py *args` in this process; returns its exit status, stdout and stderr."""
    script = TOOLS / f"{name}.py"
    argv = [str(script), *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_path, saved_cwd, saved_threads = sys.argv, sys.path[:], os.getcwd(), torch.get_num_threads()
    # the hidden packages and their loaded submodules, restored afterwards
    hidden = {m: sys.modules[m] for m in list(sys.modules) if m.split(".")[0] in hide}
    code = 0
    try:
        sys.argv = argv
        sys.path.insert(0, str(TOOLS))
        for module in {*hidden, *hide}:
            sys.modules[module] = None  # `import module` raises ImportError, find_spec finds nothing
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(script), run_name="__main__")
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
            except BaseException:  # what the interpreter would print for an uncaught exception
                traceback.print_exc()
                code = 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.chdir(saved_cwd)
        torch.set_num_threads(saved_threads)
        for module in {*hidden, *hide}:
            sys.modules.pop(module, None)
        sys.modules.update(hidden)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def load_tool(name: str):
    """`tools/<name>.py` imported as a module (tools/ on the path while it imports, as when run)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(TOOLS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(TOOLS))
    return module


def assert_one_line_error(out: subprocess.CompletedProcess, prog: str, *fragments: str) -> str:
    """Assert that a tool answered bad input as the tools do (exit status 2, one line on stderr
    starting `prog: error: `, no traceback) and that the line holds every fragment; return it."""
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def tiny_cli_options(epochs: int) -> list[str]:
    """Classification CLI options of a tiny run on a 32 px toy set: batches of 8 read in this
    process, `epochs` epochs of two batches, one validation batch, no model summary."""
    return ["--data.img_size", "32", "--data.batch_size", "8", "--data.num_workers", "0",
            "--data.persistent_workers", "false", "--trainer.max_epochs", str(epochs),
            "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
            "--trainer.enable_model_summary", "false"]
