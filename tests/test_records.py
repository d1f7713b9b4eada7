"""The records page and the README's model table are generated from the JSON records only."""
import json
import re
from pathlib import Path

import pytest

from deploy.records import (MODEL_TABLE_BEGIN, MODEL_TABLE_END, load_record_dir, load_record_file, provenance,
                            render_model_table, render_page, replace_between_markers)
from tool_runner import run_tool

PROV = {"command": "python tools/benchmark.py --models efficientformerv2_s0 mobilenetv2_100 --backend executorch",
        "date": "2026-12-07 01:00 UTC", "cpu": "Test CPU"}


def _record(model: str, backend: str, ms: float, **extra) -> dict:
    return {"model": model, "backend": backend, "precision": "fp32", "batch_size": 1, "threads": 1,
            "resolution": 224, "latency_ms_median": ms, "latency_ms_p90": ms * 1.1, "params": 3_600_256,
            "gmacs": 0.396, "top1_paper": 75.7, "max_abs_diff": 1e-6, **PROV, **extra}


def _write(folder: Path, name: str, records: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(records))
    return path


def test_provenance_names_command_date_and_cpu():
    p = provenance(["tools/benchmark.py", "--models", "a b"])
    assert p["command"] == "python tools/benchmark.py --models 'a b'"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", p["date"])
    assert p["cpu"]


def test_page_has_each_file_with_its_provenance_and_figures(tmp_path):
    folder = tmp_path / "records"
    _write(folder, "xnnpack_1thread.json", [_record("efficientformerv2_s0", "executorch", 12.345),
                                            _record("mobilenetv2_100", "executorch", 9.0)])
    page = render_page(load_record_dir(folder))
    assert "## xnnpack 1thread" in page
    assert f"- command: `{PROV['command']}`" in page
    assert "- date: 2026-12-07\n" in page and "- CPU: Test CPU" in page
    assert "| efficientformerv2_s0 | executorch | fp32 | 1 | 1 | 224 | 3.60 | 0.396 | 12.35 |" in page


def test_model_table_ratio_comes_from_the_same_run(tmp_path):
    folder = tmp_path / "records"
    _write(folder, "a.json", [_record("efficientformerv2_s0", "executorch", 12.0),
                              _record("mobilenetv2_100", "executorch", 8.0, params=3_504_872, top1_paper=71.8),
                              _record("efficientformerv2_s0", "executorch", 1.0, threads=2)])
    table = render_model_table(load_record_dir(folder))
    s0 = next(line for line in table.splitlines() if line.startswith("| efficientformerv2_s0"))
    assert "12.00 (1.50x)" in s0 and "75.7" in s0
    assert "(docs/benchmarks.md#a)" in table


def test_bad_record_files_are_refused_with_the_file_named(tmp_path):
    bad = _write(tmp_path, "bad.json", [{"model": "x"}])
    with pytest.raises(ValueError, match="bad.json is not a benchmark record file"):
        load_record_file(bad)
    no_prov = _write(tmp_path / "r", "np.json", [{**_record("m", "torch", 1.0), "command": None}])
    with pytest.raises(ValueError, match="carry no 'command'"):
        load_record_dir(no_prov.parent)
    with pytest.raises(ValueError, match="no record folder"):
        load_record_dir(tmp_path / "missing")


def test_markers_replace_only_the_table():
    text = f"intro\n{MODEL_TABLE_BEGIN}\nold\n{MODEL_TABLE_END}\noutro\n"
    assert replace_between_markers(text, "new\n") == f"intro\n{MODEL_TABLE_BEGIN}\nnew\n{MODEL_TABLE_END}\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        replace_between_markers("no markers", "x")


def test_make_records_writes_and_checks(tmp_path):
    folder = tmp_path / "records"
    _write(folder, "b.json", [_record("efficientformerv2_s0", "openvino", 10.0),
                              _record("mobilenetv2_100", "openvino", 8.0)])
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{MODEL_TABLE_BEGIN}\n{MODEL_TABLE_END}\n")
    page = tmp_path / "benchmarks.md"
    args = ["--records", str(folder), "--page", str(page), "--readme", str(readme)]
    assert run_tool("make_records", *args, "--check").returncode == 1
    result = run_tool("make_records", *args)
    assert result.returncode == 0, result.stderr
    assert "10.00 (1.25x)" in readme.read_text() and "## b" in page.read_text()
    assert run_tool("make_records", *args, "--check").returncode == 0


def test_repository_records_page_is_current():
    """docs/benchmarks.md and the README's table are what `make records` gives from the records."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "records").is_dir():
        pytest.skip("no benchmark records in the repository")
    result = run_tool("make_records", "--records", "benchmarks/records", "--page", "docs/benchmarks.md",
                      "--readme", "README.md", "--check", cwd=root)
    assert result.returncode == 0, result.stderr


def test_export_checks_and_profiles_are_rendered(tmp_path):
    folder = tmp_path / "records"
    check = {"model": "efficientformerv2_s0", "checkpoint": "toy.safetensors", "resolution": 64, "format": "openvino",
             "precision": "int8", "checked": "OpenVINO CPU vs PyTorch", "ok": True, "max_abs_diff": 2.4,
             "images": 200, "split": "data/toy_cls/val", "top1_float": 100.0, "top1_exported": 99.5,
             "agreement": 0.995, "cosine": 0.99871, **PROV}
    _write(folder, "int8_accuracy.json", [check])
    profiled = _record("efficientformerv2_s0", "openvino", 12.0, precision="int8",
                       ov_op_ms={"Convolution+Gelu (int8)": 3.0, "MatMul": 1.0})
    _write(folder, "int8_1thread.json", [_record("efficientformerv2_s0", "openvino", 14.0), profiled,
                                         _record("mobilenetv2_100", "openvino", 7.0)])
    page = render_page(load_record_dir(folder))
    assert ("| efficientformerv2_s0 | toy.safetensors | openvino | int8 | 64 | 200 | 100.00 | 99.50 | 99.5% "
            "| 0.9987 | 2.4e+00 |") in page
    assert ("- efficientformerv2_s0 openvino int8: OpenVINO nodes, 4.00 ms per run: "
            "Convolution+Gelu (int8) 3.00 (75%), MatMul 1.00 (25%)") in page
    # an export check is no latency: the model table reads the latency file only
    assert "14.00 (2.00x)" in render_model_table(load_record_dir(folder))


def test_export_tool_writes_its_check_as_a_record(tmp_path):
    out = tmp_path / "records" / "check.json"
    proc = run_tool("export", "--model", "test_efficientnet", "--format", "pt2", "--out", tmp_path / "m.pt2",
                    "--size", "32", "--json", out)
    assert proc.returncode == 0, proc.stderr
    [record] = load_record_file(out).records
    assert record["model"] == "test_efficientnet" and record["format"] == "pt2" and record["precision"] == "fp32"
    assert record["ok"] and record["max_abs_diff"] <= 1e-4 and record["resolution"] == 32
    assert record["command"].startswith("python tools/export.py --model test_efficientnet")
    assert "| test_efficientnet | pt2 | fp32 | 32 |" in render_page(load_record_dir(out.parent))


def test_model_table_takes_the_file_with_most_variants_then_the_latest(tmp_path):
    folder = tmp_path / "records"
    later = {**PROV, "date": "2026-12-08 01:00 UTC"}
    variants = ("efficientformerv2_s0", "efficientformerv2_s1")
    _write(folder, "a_one_variant.json", [_record("efficientformerv2_s0", "openvino", 10.0),
                                          _record("mobilenetv2_100", "openvino", 10.0)])
    _write(folder, "b_two_variants_early.json", [*(_record(m, "openvino", 20.0) for m in variants),
                                                 _record("mobilenetv2_100", "openvino", 10.0)])
    _write(folder, "c_two_variants_late.json", [*(_record(m, "openvino", 30.0, **later) for m in variants),
                                                _record("mobilenetv2_100", "openvino", 10.0, **later)])
    table = render_model_table(load_record_dir(folder))
    assert "30.00 (3.00x)" in table and "#c-two-variants-late" in table and "20.00" not in table


# --------------------------------------------------------------------------------------------
# durations of the documented commands (tools/time_demos.py): records, page, docs' markers
# --------------------------------------------------------------------------------------------
def _duration(name: str, condition: str, seconds: float, status: int = 0, date: str = PROV["date"]) -> dict:
    return {"demo": name, "condition": condition, "seconds": seconds, "minutes": round(seconds / 60, 1),
            "exit_status": status, "summary": f"{name}: done | ok", "cpu_count": 2, **PROV, "date": date}


def test_durations_fill_the_docs_markers_from_the_latest_successful_runs():
    from backbones.errors import FileFormatError
    from deploy.durations import fill_durations
    records = [_duration("make demo", "idle", 300.0, date="2026-12-06 01:00 UTC"),
               _duration("make demo", "idle", 290.0), _duration("make demo", "one busy core", 430.0),
               _duration("make demo", "one busy core", 10.0, status=2, date="2026-12-08 01:00 UTC"),
               _duration("predict", "idle", 47.4)]
    text = ("`make demo` takes <!-- duration: make demo -->old<!-- /duration -->; predict "
            "<!-- duration: predict -->x<!-- /duration -->.")
    assert fill_durations(text, records) == (
        "`make demo` takes <!-- duration: make demo -->about 5 min on an idle 2-core CPU, 7 min with one core busy"
        "<!-- /duration -->; predict <!-- duration: predict -->about 47 s on an idle 2-core CPU<!-- /duration -->.")
    with pytest.raises(FileFormatError, match="make demo-det.*time_demos.py"):
        fill_durations("<!-- duration: make demo-det --><!-- /duration -->", records, where="docs/dense.md")
    with pytest.raises(FileFormatError, match="not closed"):
        fill_durations("<!-- duration: make demo --> and <!-- duration: predict --><!-- /duration -->", records)


def test_time_command_runs_idle_and_beside_a_busy_core(monkeypatch, capsys):
    import os
    import sys

    from backbones.errors import UsageError
    from deploy import durations
    monkeypatch.setitem(durations.COMMANDS, "quick", [sys.executable, "-c", "print('working'); print('quick: done')"])
    idle = durations.time_command("quick", "idle", log=lambda line: None)
    assert idle["exit_status"] == 0 and idle["summary"] == "quick: done" and 0 <= idle["seconds"] < 60
    assert idle["condition"] == "idle" and len(idle["load_average_before"]) == 3
    assert "working" in capsys.readouterr().out          # the command's output is passed through
    with durations.busy_core() as core:
        assert core in os.sched_getaffinity(0)
    busy = durations.time_command("quick", "one busy core", log=lambda line: None)
    assert busy["condition"] == "one busy core" and busy["exit_status"] == 0
    monkeypatch.setitem(durations.COMMANDS, "fails", [sys.executable, "-c", "raise SystemExit(3)"])
    assert durations.time_command("fails", log=lambda line: None)["exit_status"] == 3
    with pytest.raises(UsageError, match="unknown command"):
        durations.time_command("nope")
    with pytest.raises(UsageError, match="unknown condition"):
        durations.time_command("quick", "busy")


def test_time_demos_tool_writes_records_the_page_and_the_docs_take(monkeypatch, tmp_path):
    import sys

    from deploy import durations
    monkeypatch.setitem(durations.COMMANDS, "quick", [sys.executable, "-c", "print('quick: done')"])
    folder = tmp_path / "records"
    out = folder / "demo_durations_idle.json"
    result = run_tool("time_demos", "--commands", "quick", "--json", out)
    assert result.returncode == 0, result.stderr
    (record,) = load_record_file(out).records
    assert record["demo"] == "quick" and record["command"].startswith("python tools/time_demos.py --commands quick")
    assert "| quick | idle |" in render_page(load_record_dir(folder))
    # a table cell keeps a `|` of the text it shows
    _write(tmp_path / "piped", "durations.json", [_duration("make demo", "idle", 290.0)])
    assert "| make demo: done \\| ok |" in render_page(load_record_dir(tmp_path / "piped"))
    # make records writes the duration into the docs' marker
    _write(folder, "b.json", [_record("efficientformerv2_s0", "openvino", 10.0),
                              _record("mobilenetv2_100", "openvino", 8.0)])
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{MODEL_TABLE_BEGIN}\n{MODEL_TABLE_END}\n")
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "demo.md"
    doc.write_text("Quick takes <!-- duration: quick --><!-- /duration -->.\n")
    args = ["--records", folder, "--page", tmp_path / "docs" / "benchmarks.md", "--readme", readme]
    assert run_tool("make_records", *args).returncode == 0
    filled = r"Quick takes <!-- duration: quick -->about \d+ s on an idle \d+-core CPU<!-- /duration -->\.\n"
    assert re.fullmatch(filled, doc.read_text())
    assert run_tool("make_records", *args, "--check").returncode == 0
    # bad input: one line, exit status 2
    result = run_tool("time_demos", "--commands", "nope", "--json", out)
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr
    result = run_tool("time_demos", "--commands", "quick", "--json", out / "x.json")
    assert result.returncode == 2 and "cannot be written" in result.stderr
