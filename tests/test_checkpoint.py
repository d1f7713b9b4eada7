"""Checkpoint formats, safe loading, clear errors, and the convert / profile tools."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from backbones import CheckpointError, create_model, load_checkpoint, read_state_dict, save_checkpoint
from test_backbone import randomize_

ROOT = Path(__file__).resolve().parents[1]


def official_layout(timm_sd: dict) -> dict:
    """The snap-research release's key names for a timm-layout state dict.

    Written from the official code's module structure: `patch_embed` Sequential stem, `network`
    alternating stages (even indices) and downsampling embeddings (odd), `nn.Sequential` conv-BN
    pairs numbered 0/1 (`proj` with the activation first: 1/2), Mlp norms `norm1`/`mid_norm`/
    `norm2`, layer scales of shape (C, 1, 1), `dist_head`, and the derived `attention_bias_idxs`.
    """
    out = {}
    for k, v in timm_sd.items():
        k2 = k
        for a, b in [("stem.conv1.conv.", "patch_embed.0."), ("stem.conv1.bn.", "patch_embed.1."),
                     ("stem.conv2.conv.", "patch_embed.3."), ("stem.conv2.bn.", "patch_embed.4."),
                     ("head_dist.", "dist_head.")]:
            if k2.startswith(a):
                k2 = b + k2[len(a):]
        m = re.match(r"stages\.(\d)\.blocks\.(\d+)\.(.*)", k2)
        if m:
            s, blk, rest = int(m.group(1)), m.group(2), m.group(3)
            for a, b in [("mlp.fc1.conv.", "mlp.fc1."), ("mlp.fc1.bn.", "mlp.norm1."), ("mlp.mid.conv.", "mlp.mid."),
                         ("mlp.mid.bn.", "mlp.mid_norm."), ("mlp.fc2.conv.", "mlp.fc2."), ("mlp.fc2.bn.", "mlp.norm2.")]:
                rest = rest.replace(a, b)
            if rest in ("ls1.gamma", "ls2.gamma"):
                rest, v = "layer_scale_" + rest[2], v.reshape(-1, 1, 1)
            rest = re.sub(r"token_mixer\.(q|k|v|v_local|stride_conv)\.conv\.", r"token_mixer.\1.0.", rest)
            rest = re.sub(r"token_mixer\.(q|k|v|v_local|stride_conv)\.bn\.", r"token_mixer.\1.1.", rest)
            rest = rest.replace("token_mixer.proj.conv.", "token_mixer.proj.1.").replace("token_mixer.proj.bn.", "token_mixer.proj.2.")
            k2 = f"network.{2 * s}.{blk}.{rest}"
        m = re.match(r"stages\.(\d)\.downsample\.(.*)", k2)
        if m:
            s, rest = int(m.group(1)), m.group(2)
            attn = s == 3
            rest = rest.replace("conv.conv.", "conv." if attn else "proj.").replace("conv.bn.", "bn." if attn else "norm.")
            rest = re.sub(r"attn\.(k|v|v_local)\.conv\.", r"attn.\1.0.", rest)
            rest = re.sub(r"attn\.(k|v|v_local)\.bn\.", r"attn.\1.1.", rest)
            rest = rest.replace("attn.q.local.", "attn.q.local.0.").replace("attn.q.proj.conv.", "attn.q.proj.0.")
            rest = rest.replace("attn.q.proj.bn.", "attn.q.proj.1.")
            rest = rest.replace("attn.proj.conv.", "attn.proj.1.").replace("attn.proj.bn.", "attn.proj.2.")
            k2 = f"network.{2 * s - 1}.{rest}"
        out[k2] = v
        if k2.endswith("attention_biases"):
            out[k2.replace("attention_biases", "attention_bias_idxs")] = torch.zeros(3, 3, dtype=torch.long)
    return out


@pytest.fixture(scope="module")
def reference():
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


def test_official_layout_loads_and_matches_timm(tmp_path, reference):
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
    with pytest.raises(CheckpointError, match="checkpoint is efficientformerv2_s1, but the model is efficientformerv2_s0"):
        load_checkpoint(create_model("efficientformerv2_s0"), path)


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


def test_convert_tool(tmp_path, reference):
    src = tmp_path / "official.pth"
    torch.save({"model": official_layout(reference.state_dict())}, src)
    dst = tmp_path / "s0.safetensors"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(ROOT / "tools/convert_checkpoint.py"), str(src), str(dst),
                          "--model", "efficientformerv2_s0"], capture_output=True, text=True, env=env, check=True)
    assert "official" in out.stdout and "efficientformerv2_s0" in out.stdout
    assert set(read_state_dict(dst)) == set(create_model("efficientformerv2_s0").state_dict())
    bad = subprocess.run([sys.executable, str(ROOT / "tools/convert_checkpoint.py"), str(src), str(dst),
                          "--model", "efficientformerv2_l"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "checkpoint is efficientformerv2_s0" in bad.stderr


@pytest.mark.parametrize("name, gmacs", [("efficientformerv2_s0", 0.396), ("efficientformerv2_s1", 0.652),
                                         ("efficientformerv2_s2", 1.247), ("efficientformerv2_l", 2.553)])
def test_profile_gmacs_match_reference(name, gmacs):
    spec = importlib.util.spec_from_file_location("profile_tool", ROOT / "tools/profile.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    profile = tool.profile
    r = profile(create_model(name), (224, 224))
    assert abs(r["gmacs"] - gmacs) / gmacs < 0.01
    assert r["params_deploy"] < r["params"]


def test_profile_tool_cli():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(ROOT / "tools/profile.py"), "--model", "efficientformerv2_s0"],
                         capture_output=True, text=True, env=env, check=True)
    assert "params 3,600,256" in out.stdout and "GMACs 0.396" in out.stdout


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
