"""Checkpoint formats, safe loading, clear errors, and the convert / profile tools."""
import os
from pathlib import Path

import pytest
import timm
import torch

from backbones import CheckpointError, EfficientFormerV2, create_model, load_checkpoint, read_state_dict, save_checkpoint
from tool_runner import run_tool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference(randomize_):
    return randomize_(timm.create_model("efficientformerv2_s0")).eval()


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors"])
def test_round_trip_each_suffix(tmp_path, reference, suffix):
    model = create_model("efficientformerv2_s0")
    load_checkpoint(model, reference.state_dict())
    path = save_checkpoint(model, tmp_path / f"w{suffix}")
    again = create_model("efficientformerv2_s0")
    report = load_checkpoint(again, path)
    assert report.ok and report.source_format == "project"
    x = torch.randn(1, 3, 96, 96)
    assert torch.equal(logits(model, x), logits(again, x))


def test_official_layout_loads_and_matches_timm(tmp_path, reference, official_layout):
    path = tmp_path / "official.pth"
    torch.save({"model": official_layout(reference.state_dict())}, path)
    model = create_model("efficientformerv2_s0")
    report = load_checkpoint(model, path)
    assert report.ok and report.source_format == "official"
    x = torch.randn(2, 3, 224, 224)
    assert (logits(model, x) - logits(reference, x)).abs().max() < 1e-5


def test_timm_file_and_wrapped_prefixes(tmp_path, reference):
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in reference.state_dict().items()}}, path)
    model = create_model("efficientformerv2_s0")
    assert load_checkpoint(model, path).source_format == "timm"
    x = torch.randn(1, 3, 224, 224)  # timm's model runs only at its training size
    assert torch.equal(logits(model, x), logits(reference, x))


def test_code_carrying_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(create_model("efficientformerv2_s0"), path)
    assert not marker.exists()


def test_unreadable_files_fail_clearly(tmp_path):
    model = create_model("efficientformerv2_s0")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(model, tmp_path / "missing.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(model, tmp_path / "empty.pth")
    good = save_checkpoint(model, tmp_path / "good.pth")
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(model, tmp_path / "cut.pth")
    st = save_checkpoint(model, tmp_path / "good.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(st.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(model, tmp_path / "cut.safetensors")
    torch.save({"optimizer": {"lr": 0.1}}, tmp_path / "nostate.pth")
    with pytest.raises(CheckpointError, match="no state dict"):
        load_checkpoint(model, tmp_path / "nostate.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an EfficientFormerV2"):
        load_checkpoint(model, tmp_path / "other.pth")


def test_wrong_variant_names_the_checkpoint_variant(tmp_path):
    path = save_checkpoint(create_model("efficientformerv2_s1"), tmp_path / "s1.safetensors")
    with pytest.raises(CheckpointError, match=r"checkpoint is efficientformerv2_s1, but the model is "
                                              r"efficientformerv2_s0.*create_model\('efficientformerv2_s1'\)"):
        load_checkpoint(create_model("efficientformerv2_s0"), path)
    # a switched or searched architecture is no create_model name: the hint builds it from the file
    switched = save_checkpoint(EfficientFormerV2({"base": "s1", "attention_bias": False}), tmp_path / "nb.pth")
    with pytest.raises(CheckpointError, match=r"attention_bias=False.*EfficientFormerV2\(infer_arch"):
        load_checkpoint(create_model("efficientformerv2_s0"), switched)


def test_another_training_grid_says_which_img_size_to_build(tmp_path):
    path = save_checkpoint(EfficientFormerV2("s0", num_classes=10), tmp_path / "s0.pth")
    with pytest.raises(CheckpointError, match="attention-bias tables are of another grid.*img_size=224"):
        load_checkpoint(EfficientFormerV2("s0", num_classes=10, img_size=64), path)


def test_missing_and_unexpected_keys_are_named(reference):
    sd = dict(reference.state_dict())
    del sd["stages.1.blocks.0.mlp.mid.bn.weight"]
    sd["stages.1.blocks.0.extra"] = torch.zeros(1)
    model = create_model("efficientformerv2_s0")
    with pytest.raises(CheckpointError, match=r"missing: stages\.1\.blocks\.0\.mlp\.mid\.bn\.weight.*"
                                              r"unexpected: stages\.1\.blocks\.0\.extra"):
        load_checkpoint(model, sd)
    report = load_checkpoint(model, sd, strict=False)
    assert report.missing == ["stages.1.blocks.0.mlp.mid.bn.weight"]
    assert report.unexpected == ["stages.1.blocks.0.extra"]


def test_classifier_options(reference):
    model = create_model("efficientformerv2_s0", num_classes=10)
    with pytest.raises(CheckpointError, match="classifier='drop' or 'resize'"):
        load_checkpoint(model, reference.state_dict())
    fresh_head = model.head.weight.clone()
    report = load_checkpoint(model, reference.state_dict(), classifier="drop")
    assert report.ok and "head.weight" in report.skipped
    assert torch.equal(model.head.weight, fresh_head)
    assert torch.equal(model.stem.conv1.conv.weight, reference.stem.conv1.conv.weight)
    load_checkpoint(model, reference.state_dict(), classifier="resize")
    assert torch.equal(model.head.weight, reference.head.weight[:10])
    bigger = create_model("efficientformerv2_s0", num_classes=1200)
    load_checkpoint(bigger, reference.state_dict(), classifier="resize")
    assert torch.equal(bigger.head_dist.weight[:1000], reference.head_dist.weight)


def test_features_only_backbone_skips_the_classifier(reference):
    backbone = create_model("efficientformerv2_s0", features_only=True)
    report = load_checkpoint(backbone, reference.state_dict())
    assert report.ok and {"head.weight", "norm.weight"} <= set(report.skipped)


def test_convert_tool(tmp_path, reference, official_layout):
    src = tmp_path / "official.pth"
    torch.save({"model": official_layout(reference.state_dict())}, src)
    dst = tmp_path / "s0.safetensors"
    out = run_tool("convert_checkpoint", src, dst, "--model", "efficientformerv2_s0")
    assert out.returncode == 0, out.stderr
    assert "official" in out.stdout and "efficientformerv2_s0" in out.stdout
    assert set(read_state_dict(dst)) == set(create_model("efficientformerv2_s0").state_dict())
    bad = run_tool("convert_checkpoint", src, dst, "--model", "efficientformerv2_l")
    assert bad.returncode != 0 and "checkpoint is efficientformerv2_s0" in bad.stderr


def test_wrapped_in_a_detector_or_lightning_module(reference):
    """mmengine detector checkpoints ("backbone.") and Lightning ones ("model." beside a teacher)."""
    sd = reference.state_dict()
    detector = {"meta": {"epoch": 1}, "state_dict": {**{"backbone." + k: v for k, v in sd.items()},
                                                     "neck.conv.weight": torch.zeros(2)}}
    backbone = create_model("efficientformerv2_s0", features_only=True)
    assert load_checkpoint(backbone, detector["state_dict"]).ok
    teacher = create_model("efficientformerv2_s0").state_dict()
    lightning = {"state_dict": {**{"teacher." + k: v for k, v in teacher.items()},
                                **{"model." + k: v for k, v in sd.items()}}}
    model = create_model("efficientformerv2_s0")
    load_checkpoint(model, lightning)
    assert torch.equal(model.stem.conv1.conv.weight, reference.stem.conv1.conv.weight)
