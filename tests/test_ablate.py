"""The design-space configs (Tables 1, 7, 8 and the Table 2 / Table 6 recipes), the study's library
(`classification.ablation`) and its command line tools/ablate.py:
every config parses on top of its variant config and builds; parameter counts against hand-derived
values; the tool's JSON/Markdown without and with a short training; bad input."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

from backbones import EfficientFormerV2, efficientformerv2_s1
from classification import ablation as ablate
from classification.__main__ import ClassificationCLI
from classification.data import ImageNetDataModule
from classification.module import ImageClassifier
from classification.toy_data import make_toy_classification
from conftest import REFERENCE_PARAMS
from deploy.profile import count_params
from tool_runner import run_tool

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "classification"
ABLATIONS = CONFIGS / "ablations"
RECIPES = CONFIGS / "recipes"
TOOL = REPO / "tools" / "ablate.py"
ABLATION_CONFIGS = sorted(ABLATIONS.glob("*.yaml"))


class ParseOnlyCLI(ClassificationCLI):
    """The classification CLI up to a parsed, type-checked config (nothing instantiated)."""

    def instantiate_classes(self) -> None:
        pass


def parse(*configs: Path):
    args = [a for c in configs for a in ("--config", str(c))] + ["--data.root", "unused"]
    with mock.patch.object(sys, "argv", ["classification"]):  # pytest's own arguments are not the CLI's
        return ParseOnlyCLI(ImageClassifier, ImageNetDataModule, auto_configure_optimizers=False, run=False,
                            args=args).config


def base_variant(config: Path) -> str:
    return yaml.safe_load(config.read_text())["model"]["arch"]["base"]


S0_PROBES = ("s0_conv-downsampling", "s0_stage4-mhsa-only", "s0_no-mhsa")  # where S0's time goes, no paper rows


def test_the_expected_rows_exist():
    names = {c.stem for c in ABLATION_CONFIGS}
    assert {f"table1_{i}" for i in range(6)} <= {n[:8] for n in names}
    assert {"table7_s1_attention-bias", "table7_s1_no-attention-bias", "table8_expansion-4", "table8_expansion-2",
            "table8_expansion-1"} <= names
    paper_rows = {n for n in names if n.startswith("table")}
    assert paper_rows <= set(ablate.PAPER)  # every paper row has the paper's figures in the tool's table
    assert names - paper_rows == set(S0_PROBES)


@pytest.mark.parametrize("config", ABLATION_CONFIGS, ids=lambda p: p.stem)
def test_ablation_config_parses_on_its_variant_and_builds(config):
    base = base_variant(config)
    parsed = parse(CONFIGS / f"efficientformerv2_{base}.yaml", config)
    assert parsed.model.arch["base"] == base
    assert parsed.trainer.default_root_dir == f"runs/cls/ablations/{config.stem}"  # not the variant's run folder
    model = EfficientFormerV2(parsed.model.arch, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 67, 61)).shape == (1, 10)
    assert ablate.read_config(config).arch == parsed.model.arch


def test_table1_last_row_is_s2_and_the_switches_change_the_model():
    s2 = count_params(EfficientFormerV2("s2"))
    params = {c.stem[:8]: count_params(EfficientFormerV2(ablate.read_config(c).arch))
              for c in ABLATION_CONFIGS if c.stem.startswith("table1")}
    assert params["table1_5"] == s2 == REFERENCE_PARAMS["efficientformerv2_s2"]
    assert len(set(params.values())) == len(params)  # each row differs from the one before


def test_table7_no_bias_removes_exactly_the_bias_tables():
    with_bias = EfficientFormerV2(ablate.read_config(ABLATIONS / "table7_s1_attention-bias.yaml").arch)
    without = EfficientFormerV2(ablate.read_config(ABLATIONS / "table7_s1_no-attention-bias.yaml").arch)
    assert count_params(with_bias) == count_params(efficientformerv2_s1()) == REFERENCE_PARAMS["efficientformerv2_s1"]
    # hand-derived at 224: 8 heads x 7x7 offsets in the 2 stride-attention blocks of stage 3 and the
    # 2 blocks of stage 4, and 8 heads x 14x14 in the downsampling attention (queries at 7x7)
    tables = 4 * 8 * 7 * 7 + 8 * 14 * 14
    assert count_params(with_bias) - count_params(without) == tables == 3136
    bias_names = {n for n, _ in with_bias.named_parameters()} - {n for n, _ in without.named_parameters()}
    assert sum(dict(with_bias.named_parameters())[n].numel() for n in bias_names) == tables
    assert all("bias" in n for n in bias_names)


def test_table8_rows_have_the_same_size_and_uniform_expansions():
    params = {}
    for ratio in (4, 2, 1):
        arch = ablate.read_config(ABLATIONS / f"table8_expansion-{ratio}.yaml").arch
        model = EfficientFormerV2(arch)
        assert {e for s in model.arch.stages for e in s.expansions} == {ratio}
        assert model.arch.depths == EfficientFormerV2("s2").arch.depths
        params[ratio] = count_params(model)
    assert max(params.values()) / min(params.values()) - 1 < 0.01, params


def test_s0_probes_remove_exactly_the_attention():
    """Each probe is S0 less some attention: the parameters it loses are exactly those of the
    removed attention modules (with their layer scales), the FFNs and the rest stay."""
    s0 = EfficientFormerV2("s0")

    def attention_params(stage_blocks: dict[int, range], downsample: bool) -> int:
        total = 0
        for stage, blocks in stage_blocks.items():
            for i in blocks:
                block = s0.stages[stage].blocks[i]
                total += count_params(block.token_mixer) + block.ls1.gamma.numel()
        if downsample:
            total += count_params(s0.stages[3].downsample.attn)
        return total

    removed = {"s0_conv-downsampling": attention_params({}, True),
               "s0_stage4-mhsa-only": attention_params({2: range(4, 6)}, True),
               "s0_no-mhsa": attention_params({2: range(4, 6), 3: range(2, 4)}, True)}
    for name, params in removed.items():
        probe = EfficientFormerV2(ablate.read_config(ABLATIONS / f"{name}.yaml").arch)
        assert count_params(s0) - count_params(probe) == params > 0, name
    plain = EfficientFormerV2(ablate.read_config(ABLATIONS / "s0_no-mhsa.yaml").arch)
    assert all(b.token_mixer is None for stage in plain.stages for b in stage.blocks)
    assert plain.arch.widths == s0.arch.widths and plain.arch.depths == s0.arch.depths


def test_image_classifier_takes_an_ablation_arch():
    arch = ablate.read_config(ABLATIONS / "table7_s1_no-attention-bias.yaml").arch
    module = ImageClassifier(arch=arch, num_classes=10, img_size=64)
    assert not any("attention_bias" in n for n, _ in module.model.named_parameters())
    assert module.model.arch.widths == efficientformerv2_s1().arch.widths


def test_recipes_are_one_config_away():
    s1 = CONFIGS / "efficientformerv2_s1.yaml"
    assert parse(s1).model.teacher is None
    distilled = parse(s1, RECIPES / "distill_regnety160.yaml").model
    assert distilled.teacher["name"] == "regnety_160" and distilled.distillation_type == "hard"
    assert distilled.distillation_alpha == 0.5
    assert parse(s1, RECIPES / "distill_regnety160.yaml", RECIPES / "no_distill.yaml").model.teacher is None
    # a published row: variant, recipe and ablation combine
    row = parse(s1, RECIPES / "distill_regnety160.yaml", ABLATIONS / "table7_s1_no-attention-bias.yaml").model
    assert row.teacher["name"] == "regnety_160" and row.arch == {"base": "s1", "attention_bias": False}
    assert distilled.teacher["checkpoint"] == "hf-hub:timm/regnety_160.deit_in1k"  # the published teacher
    with pytest.raises(ValueError, match="checkpoint is required"):  # never a randomly initialised teacher
        ImageClassifier(model_name="efficientformerv2_s0", num_classes=10,
                        teacher={**distilled.teacher, "checkpoint": None})


def test_ablate_without_data(tmp_path):
    configs = [ABLATIONS / "table7_s1_attention-bias.yaml", ABLATIONS / "table7_s1_no-attention-bias.yaml"]
    result = ablate.ablate(configs, tmp_path, backends=("torch",), threads=1, runs=2, warmup=1)
    saved = json.loads((tmp_path / "ablate.json").read_text())
    assert saved["settings"]["backends"] == ["torch"] and saved["settings"]["data"] is None
    rows = saved["rows"]
    assert [r["label"] for r in rows] == ["table7_s1_attention-bias", "table7_s1_no-attention-bias"]
    assert rows[0]["params"] - rows[1]["params"] == 3136
    assert rows[0]["gmacs"] == pytest.approx(0.652, abs=1e-3)
    for r in rows:
        assert r["latency_ms"]["torch"] > 0 and r["latency_ms_p90"]["torch"] >= r["latency_ms"]["torch"]
        assert r["top1"] is None and r["paper"]["row"].startswith("Tab. 7")
    markdown = (tmp_path / "ablate.md").read_text()
    assert markdown.startswith("| config | params (M) | GMACs | torch ms | paper row")
    assert "| table7_s1_no-attention-bias | 6.182 |" in markdown
    assert markdown.strip() == result["markdown"]
    assert (tmp_path / "ablate.png").read_bytes()[:4] == b"\x89PNG"


def test_ablate_with_a_baseline_model(tmp_path):
    result = ablate.ablate([ABLATIONS / "s0_no-mhsa.yaml"], tmp_path, backends=("torch",), threads=1, runs=2,
                           warmup=1, baseline="mobilenetv2_100")
    rows = json.loads((tmp_path / "ablate.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["s0_no-mhsa", "mobilenetv2_100"]
    probe, base = rows
    assert base["baseline"] and base["params"] == 3_504_872 and base["gmacs"] == pytest.approx(0.3008, abs=1e-4)
    assert base["vs_baseline"] == {"torch": 1.0}
    assert probe["vs_baseline"]["torch"] == pytest.approx(probe["latency_ms"]["torch"] / base["latency_ms"]["torch"],
                                                          abs=1e-3)
    assert result["settings"]["baseline"] == "mobilenetv2_100"
    assert result["markdown"].startswith("| config | params (M) | GMACs | torch ms | torch / mobilenetv2_100 |")
    assert "| mobilenetv2_100 | 3.505 | 0.301 |" in result["markdown"]


@pytest.mark.slow
def test_ablate_with_data_reports_top1(tmp_path):
    data = make_toy_classification(tmp_path / "toy", train_per_class=2, val_per_class=1, size=32)
    recipe = yaml.safe_load((CONFIGS / "toy.yaml").read_text())
    recipe["data"].update(num_workers=0, persistent_workers=False)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    configs = [CONFIGS / "efficientformerv2_s0.yaml", ABLATIONS / "table7_s1_no-attention-bias.yaml"]
    ablate.ablate(configs, tmp_path / "out", threads=1, runs=1, warmup=0, data=data, epochs=1, img_size=32,
                  batch_size=10, train_config=tmp_path / "recipe.yaml")
    rows = json.loads((tmp_path / "out" / "ablate.json").read_text())["rows"]
    assert [r["arch"] for r in rows] == ["s0", {"base": "s1", "attention_bias": False}]
    for r in rows:
        assert 0.0 <= r["top1"] <= 1.0 and r["train_seconds"] > 0
    assert rows[0]["paper"] is None
    assert "top-1 (%)" in (tmp_path / "out" / "ablate.md").read_text()
    assert not list((tmp_path / "out" / "train").rglob("*.ckpt"))  # no checkpoints unless asked


def _run_tool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_tool(TOOL.stem, *args, "--runs", "1", "--warmup", "0", cwd=cwd)


def _assert_bad_input(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ablate: error:"), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("arch, words", [
    ({"base": "s1", "attention_bias_": False}, ("bad.yaml", "attention_bias_", "attention_bias")),
    ({"base": "s1", "downsampling": "pool"}, ("bad.yaml", "pool", "dual")),
], ids=["unknown-switch", "unknown-value"])
def test_bad_arch_in_config(tmp_path, arch, words):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"model": {"arch": arch}}))
    _assert_bad_input(_run_tool(str(tmp_path / "bad.yaml"), cwd=tmp_path), *words)


def test_missing_config_and_config_without_arch(tmp_path):
    _assert_bad_input(_run_tool(str(tmp_path / "missing.yaml"), cwd=tmp_path), "missing.yaml")
    (tmp_path / "recipe.yaml").write_text("model:\n  teacher: null\n")
    _assert_bad_input(_run_tool(str(tmp_path / "recipe.yaml"), cwd=tmp_path), "names no architecture")


def test_bad_baseline(tmp_path):
    config = str(ABLATIONS / "s0_no-mhsa.yaml")
    _assert_bad_input(_run_tool(config, "--baseline", "mobilenetv2_10O", cwd=tmp_path),
                      "--baseline", "mobilenetv2_10O", "mobilenetv2_100")  # with what the user may have meant
    _assert_bad_input(_run_tool(config, "--baseline", "s0_no-mhsa", cwd=tmp_path), "s0_no-mhsa", "rename")
    assert not (tmp_path / "runs").exists()


def test_the_tool_is_a_thin_script_over_the_package():
    """The study lives in the package; the tool imports no other tool and no library code of its own."""
    text = TOOL.read_text()
    assert "from classification.ablation import" in text and "def measure" not in text
    assert not re.search(r"^\s*(from ablate import|import ablate\b)", (REPO / "tools/demo_ablate.py").read_text(),
                         re.M)
    with pytest.raises(ablate.AblationError, match="train_config") as info:
        ablate.ablate([ABLATIONS / "s0_no-mhsa.yaml"], Path("unused"), data=CONFIGS)   # data without a recipe
    assert info.value.option == "train_config"


def test_missing_data_folder(tmp_path):
    proc = _run_tool(str(ABLATIONS / "table7_s1_no-attention-bias.yaml"), "--data", str(tmp_path / "nowhere"),
                     cwd=tmp_path)
    _assert_bad_input(proc, "nowhere", "does not exist")
    assert not (tmp_path / "runs").exists()  # refused before measuring anything
