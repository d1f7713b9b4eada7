"""Checkpoint formats, safe loading, clear errors, and the convert / profile tools."""
import os
from pathlib import Path

import pytest
import timm
import torch

from backbones import CheckpointError, EfficientFormerV2, create_model, load_checkpoint, read_state_dict, save_checkpoint
from backbones.checkpoint import DIGEST_KEY, check_checkpoint, resample_attention_biases, tensor_digest
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
    with pytest.raises(CheckpointError, match="damaged: not a readable PyTorch checkpoint"):
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


def test_non_square_bias_tables_say_which_img_size_to_build():
    model = EfficientFormerV2("s0", num_classes=10, img_size=64)
    sd = dict(EfficientFormerV2("s0", num_classes=10).state_dict())
    key = "stages.3.downsample.attn.pos_bias.attention_biases"
    sd[key] = sd[key][:, :48]  # 48 offsets: no square grid to resample from
    with pytest.raises(CheckpointError, match="attention-bias tables are of another grid.*img_size=224"):
        load_checkpoint(model, sd)


@pytest.mark.parametrize("img_size", [64, 320])
def test_bias_tables_of_another_grid_are_resampled(tmp_path, reference, img_size):
    """A 224 checkpoint into a model built for a smaller or larger input: the tables are moved to
    the model's grid as the model itself moves them at run time, so the outputs equal those of
    the 224 model at that input size."""
    path = save_checkpoint(reference.state_dict(), tmp_path / "s0_224.safetensors")
    at_224 = create_model("efficientformerv2_s0")
    load_checkpoint(at_224, path)
    model = create_model("efficientformerv2_s0", img_size=img_size)
    report = load_checkpoint(model, path)
    key = "stages.3.downsample.attn.pos_bias.attention_biases"
    side = -(-img_size // 16)
    assert key in report.resampled and model.state_dict()[key].shape == (8, side * side)
    x = torch.randn(1, 3, img_size, img_size)
    out = logits(model, x)
    assert torch.isfinite(out).all()
    assert (out - logits(at_224, x)).abs().max() < 1e-4
    if img_size == 64:  # fine-tuning from it runs
        out = model.train()(x.expand(2, -1, -1, -1))
        (out[0] if isinstance(out, tuple) else out).sum().backward()


def test_resampling_to_the_same_grid_is_the_identity():
    table = torch.randn(8, 49)
    assert torch.equal(resample_attention_biases(table, 49), table)
    for mode in ("bilinear", "bicubic"):
        there = resample_attention_biases(table, 16, mode=mode)
        assert there.shape == (8, 16) and torch.isfinite(there).all()
        # corners aligned: offset 0 and the largest offset keep their values
        assert torch.allclose(there.view(8, 4, 4)[:, 0, 0], table.view(8, 7, 7)[:, 0, 0])
        assert torch.allclose(there.view(8, 4, 4)[:, -1, -1], table.view(8, 7, 7)[:, -1, -1])
    model = create_model("efficientformerv2_s0", img_size=64)
    report = load_checkpoint(model, model.state_dict())
    assert report.ok and not report.resampled


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


# --------------------------------------------------------------------------------------------
# Integrity: every kind of damage is one CheckpointError that says what is wrong
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s0_weights():
    return {k: v.clone() for k, v in create_model("efficientformerv2_s0", img_size=64).state_dict().items()}


def _change_byte(path: Path, tensor: torch.Tensor) -> None:
    """Flip bits of one byte inside `tensor`'s data in the file."""
    data = bytearray(path.read_bytes())
    at = data.find(tensor.contiguous().numpy().tobytes()[:64])
    assert at > 0
    data[at + 10] ^= 0x5A
    path.write_bytes(bytes(data))


def _zero_tail(path: Path, n: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-n] + bytes(n))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_project_files_record_a_digest_that_loading_verifies(tmp_path, s0_weights, suffix):
    path = save_checkpoint(s0_weights, tmp_path / f"w{suffix}")
    if suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            assert f.metadata()[DIGEST_KEY] == tensor_digest(s0_weights)
    else:
        assert torch.load(path, weights_only=True)[DIGEST_KEY] == tensor_digest(s0_weights)
    check_checkpoint(path)  # sound
    load_checkpoint(create_model("efficientformerv2_s0", img_size=64), path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_changed_bytes_are_refused(tmp_path, s0_weights, suffix):
    path = save_checkpoint(s0_weights, tmp_path / f"w{suffix}")
    _change_byte(path, s0_weights["stages.2.blocks.1.mlp.fc1.conv.weight"])
    with pytest.raises(CheckpointError, match="damaged: (its tensors do not match the digest|the archive member .* "
                                              "fails its CRC check)"):
        load_checkpoint(create_model("efficientformerv2_s0", img_size=64), path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_zeroed_tail_is_refused(tmp_path, s0_weights, suffix):
    path = save_checkpoint(s0_weights, tmp_path / f"w{suffix}")
    _zero_tail(path, 3000)
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(create_model("efficientformerv2_s0", img_size=64), path)


def test_digest_mismatch_inside_a_sound_archive(tmp_path, s0_weights):
    """Bytes changed before the archive was written (its CRCs agree): the digest still tells."""
    path = save_checkpoint(s0_weights, tmp_path / "w.pth")
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["stem.conv1.conv.weight"][0, 0, 0, 0] += 1
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=f"damaged: its tensors do not match the digest recorded.*{DIGEST_KEY}"):
        read_state_dict(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused(tmp_path, s0_weights, suffix, value):
    sd = dict(s0_weights)
    sd["stages.2.blocks.0.mlp.fc1.conv.weight"] = sd["stages.2.blocks.0.mlp.fc1.conv.weight"].clone()
    sd["stages.2.blocks.0.mlp.fc1.conv.weight"][0, 0] = value
    path = save_checkpoint(sd, tmp_path / f"w{suffix}")  # its digest is right: the values are wrong
    with pytest.raises(CheckpointError, match=r"damaged: NaN or Inf values in stages\.2\.blocks\.0\.mlp\.fc1\.conv\.weight"):
        load_checkpoint(create_model("efficientformerv2_s0", img_size=64), path)
    with pytest.raises(CheckpointError, match="NaN or Inf"):  # an in-memory state dict too
        load_checkpoint(create_model("efficientformerv2_s0", img_size=64), sd)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_integer_tensor_into_a_float_parameter_is_refused(tmp_path, s0_weights, suffix):
    sd = dict(s0_weights)
    sd["head.weight"] = (sd["head.weight"] * 100).to(torch.int32)
    path = save_checkpoint(sd, tmp_path / f"w{suffix}")
    with pytest.raises(CheckpointError, match=r"head\.weight is int32 but the model's is float32"):
        load_checkpoint(create_model("efficientformerv2_s0", img_size=64), path)


def test_files_without_a_digest_are_checked_too(tmp_path, reference):
    """The official and timm releases carry no digest: structure, CRCs, values and kinds."""
    sd = reference.state_dict()
    path = tmp_path / "timm.pth"
    torch.save(sd, path)
    assert load_checkpoint(create_model("efficientformerv2_s0"), path).ok
    damaged = tmp_path / "timm_byte.pth"
    damaged.write_bytes(path.read_bytes())
    _change_byte(damaged, sd["stages.2.blocks.1.mlp.fc1.conv.weight"])
    with pytest.raises(CheckpointError, match="fails its CRC check"):
        read_state_dict(damaged)
    zeroed = tmp_path / "timm_tail.pth"
    zeroed.write_bytes(path.read_bytes())
    _zero_tail(zeroed, 2000)
    with pytest.raises(CheckpointError, match="damaged: not a readable PyTorch checkpoint"):
        read_state_dict(zeroed)
    nan = {k: v.clone() for k, v in sd.items()}
    nan["stem.conv1.conv.weight"][0] = float("nan")
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"NaN or Inf values in stem\.conv1\.conv\.weight"):
        load_checkpoint(create_model("efficientformerv2_s0"), tmp_path / "nan.pth")
    ints = dict(sd)
    ints["stem.conv1.bn.running_var"] = torch.ones(ints["stem.conv1.bn.running_var"].shape, dtype=torch.int64)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in ints.items()}, str(tmp_path / "ints.safetensors"))
    with pytest.raises(CheckpointError, match=r"stem\.conv1\.bn\.running_var is int64"):
        load_checkpoint(create_model("efficientformerv2_s0"), tmp_path / "ints.safetensors")


def test_saved_files_have_normal_permissions(tmp_path, s0_weights):
    old = os.umask(0o022)
    try:
        for suffix in (".safetensors", ".pth"):
            path = save_checkpoint(s0_weights, tmp_path / f"w{suffix}")
            assert path.stat().st_mode & 0o777 == 0o644
        assert not list(tmp_path.glob(".*partial"))
    finally:
        os.umask(old)
