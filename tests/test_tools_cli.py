"""Bad input to tools/convert_checkpoint.py, model_profile.py, make_toy_data.py and the demos: one line
on stderr that names the problem (tools/_cli.py's `prog: error: ...`), exit status 2, no traceback.

Every case runs the tool's `__main__` in this process (`tool_runner.run_tool`); one case also runs
it as a new Python process, the way a user does."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from tool_runner import load_tool, run_tool

REPO = Path(__file__).resolve().parents[1]

# case id -> (tool, arguments, a fragment the error line must contain)
CASES: dict[str, tuple[str, list[str], str]] = {
    "convert-empty": ("convert_checkpoint", ["empty.pth", "out.safetensors"], "is empty (0 bytes)"),
    "convert-text": ("convert_checkpoint", ["notes.pth", "out.safetensors"], "not a checkpoint: the file is a text file"),
    "convert-pickled-code": ("convert_checkpoint", ["module.pth", "out.safetensors"], "could run code when unpickled"),
    "convert-missing": ("convert_checkpoint", ["missing.pth", "out.safetensors"], "does not exist"),
    "convert-dst-suffix": ("convert_checkpoint", ["weights.pth", "out.pth"], "DST must end in .safetensors"),
    "profile-zero-resolution": ("model_profile", ["--resolution", "0", "0"], "positive number of pixels, got 0 0"),
    "profile-three-sides": ("model_profile", ["--resolution", "1", "2", "3"], "one side or a height and a width"),
    "profile-negative-classes": ("model_profile", ["--num-classes", "-1"], "--num-classes must be 0"),
    "profile-arch-not-json": ("model_profile", ["--arch", "notes.pth"], "is not JSON"),
    "profile-arch-malformed": ("model_profile", ["--arch", "stage_ratios.json"], "expansions 4 lists of ratios"),
    "edge-missing-checkpoint": ("demo_edge", ["--checkpoint", "missing.safetensors"], "missing.safetensors does not exist"),
    "ablate-demo-threads": ("demo_ablate", ["--threads", "0"], "--threads must be >= 1"),
    "toy-out-is-a-file": ("make_toy_data", ["--task", "cls", "--out", "notes.pth/toy"], "is a file, not a folder"),
    "toy-negative-seed": ("make_toy_data", ["--task", "cls", "--out", "toy", "--seed", "-1"], "--seed must be 0 or more"),
    "demo-threads": ("demo_cls", ["--threads", "0"], "--threads: expected a positive integer, got '0'"),
    "demo-missing-config": ("demo_cls", ["--config", "missing.yaml"], "--config missing.yaml is not a file"),
    "demo-data-is-a-file": ("demo_cls", ["--data", "notes.pth"], "--data notes.pth is a file, not a folder"),
    "dense-unknown-task": ("demo_dense", ["pose"], "invalid choice: 'pose'"),
    "dense-data-is-a-file": ("demo_dense", ["det", "--data", "notes.pth"], "--data notes.pth is a file"),
}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> Path:
    """A folder holding the bad inputs, the cases' working folder."""
    cwd = tmp_path_factory.mktemp("tools_cli")
    (cwd / "empty.pth").write_bytes(b"")
    (cwd / "notes.pth").write_text("these are notes, not weights\n")
    torch.save(nn.Linear(2, 2), cwd / "module.pth")             # a pickled module: code on load
    torch.save({"w": torch.zeros(2)}, cwd / "weights.pth")
    (cwd / "stage_ratios.json").write_text('{"widths": [32, 48, 96, 176], "expansions": [4, 4, 4, 4]}')
    return cwd


def _assert_one_line_error(r: subprocess.CompletedProcess, tool: str, fragment: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    prog = lines[0].split(": error: ")[0]  # the script's name, or its make target's (demo_edge: demo-edge)
    assert prog in (tool, tool.replace("_", "-")) and fragment in lines[0], lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_status_2(bad_inputs, case):
    tool, args, fragment = CASES[case]
    _assert_one_line_error(run_tool(tool, *args, cwd=bad_inputs), tool, fragment)


def test_bad_input_from_a_new_python_process(bad_inputs):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(REPO / "tools/convert_checkpoint.py"), "notes.pth", "out.safetensors"],
                       cwd=bad_inputs, env=env, capture_output=True, text=True, timeout=300)
    _assert_one_line_error(r, "convert_checkpoint", "not a checkpoint: the file is a text file")


def test_only_the_projects_errors_are_bad_input(capsys):
    """The project's errors (and argparse's) are one line and status 2; any other exception, a
    ValueError, OSError or ImportError from torch or a bug, keeps its traceback (status 1)."""
    from backbones.errors import CheckpointError, EfficientFormerV2Error, NotFoundError, UsageError
    from deploy.stacks import ExportStackError
    from imagefolder import DataError

    cli = load_tool("_cli")

    def raising(exc):
        def main(argv):
            raise exc
        return main

    for error in (UsageError("u"), NotFoundError("n"), CheckpointError("c"), DataError("d"), ExportStackError("e")):
        assert isinstance(error, EfficientFormerV2Error)
        assert cli.run(raising(error), "tool") == 2
        assert capsys.readouterr().err == f"tool: error: {error}\n"
    for bug in (ValueError("shapes do not match"), FileNotFoundError("x"), ImportError("no module"),
                RuntimeError("boom")):
        with pytest.raises(type(bug)):
            cli.run(raising(bug), "tool")


def test_tools_offer_the_packages_choices():
    """The tools keep their choices as literals (their --help needs no torch): the packages' own."""
    from deploy.benchmark import BACKENDS
    from deploy.export import CALIBRATION_COUNT, FORMATS, INT8_MIN_AGREEMENT
    from deploy.latency_lut import BACKENDS as LUT_BACKENDS

    assert tuple(load_tool("benchmark").BACKEND_CHOICES) == BACKENDS
    assert tuple(load_tool("build_latency_lut").BACKENDS) == LUT_BACKENDS
    export = load_tool("export")
    assert tuple(export.FORMATS) == FORMATS
    assert (export.CALIBRATION_IMAGES, export.MIN_AGREEMENT) == (CALIBRATION_COUNT, INT8_MIN_AGREEMENT)


def test_tools_import_no_other_tool_and_packages_import_no_tool():
    """Tools reach shared code through the packages and the two helper modules `_cli` and `_demo`
    (tools/ is first on sys.path when a script runs); no tool imports another tool's script, no
    package imports tools/, and no script shadows a standard-library module (the old profile.py)."""
    import ast

    scripts = {p.stem for p in (REPO / "tools").glob("*.py")}
    helpers = {"_cli", "_demo"}
    assert not scripts & set(sys.stdlib_module_names), scripts & set(sys.stdlib_module_names)

    def imported(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        return names

    for path in sorted((REPO / "tools").glob("*.py")):
        assert not (imported(path) & scripts) - helpers, (path.name, (imported(path) & scripts) - helpers)
    for package in ("backbones", "classification", "deploy", "openmmlab", "detection", "segmentation"):
        for path in sorted((REPO / package).rglob("*.py")):
            assert not imported(path) & (scripts | {"tools"}), path
