"""The paper's design switches (Section 3, Tables 1 and 7) as fields of `Arch`: defaults equal the
released variants, each switch removes or adds exactly its parameters, every combination builds,
runs at odd sizes, fuses with parity and exports; bad values are named."""
import itertools

import pytest
import torch

from backbones import SWITCHES, VARIANTS, Arch, EfficientFormerV2, stage_plans
from backbones.supernet import SubnetConfig
from conftest import REFERENCE_PARAMS, TINY_ARCH as TINY



def n_params(arch, **kw) -> int:
    with torch.device("meta"):
        model = EfficientFormerV2(arch, **kw)
    return sum(p.numel() for p in model.parameters())


def test_defaults_are_the_papers_and_leave_the_variants_unchanged():
    for name, arch in VARIANTS.items():
        assert arch.non_default_switches() == {}
        assert Arch.from_dict(arch.to_dict()) == arch
        assert Arch.from_dict({"base": name}) == arch
    # reference parameter counts (timm's models)
    assert n_params("s0") == REFERENCE_PARAMS["efficientformerv2_s0"]
    assert n_params("s1") == REFERENCE_PARAMS["efficientformerv2_s1"]


def test_no_attention_bias_removes_exactly_the_bias_tables():
    # S1 at 224: stage-3 MHSA on the strided 7x7 grid (2 blocks), stage-4 MHSA on 7x7 (2 blocks),
    # the attention downsampling's keys on the 14x14 grid; 8 heads each
    expected = 8 * (2 * 7 * 7 + 2 * 7 * 7 + 14 * 14)
    assert n_params("s1") - n_params({"base": "s1", "attention_bias": False}) == expected == 3136
    model = EfficientFormerV2({"base": "s1", "attention_bias": False})
    assert not any("pos_bias" in n for n, _ in model.named_parameters())
    full = {n for n, _ in EfficientFormerV2("s1").named_parameters()}
    assert full - {n for n, _ in model.named_parameters()} == {n for n in full if "pos_bias" in n}


def test_each_switch_changes_exactly_its_parameters():
    s0 = n_params("s0")
    mhsa = 4  # S0: 2 MHSA blocks in stage 3, 2 in stage 4
    assert s0 - n_params({"base": "s0", "talking_heads": False}) == mhsa * 2 * (8 * 8 + 8)
    v_dim, v_dim_down = 4 * 32 * 8, 4 * 16 * 8  # heads x value dim
    assert s0 - n_params({"base": "s0", "local_v": False}) == mhsa * 12 * v_dim + 12 * v_dim_down
    # full-resolution stage-3 MHSA: no strided depth-wise conv (9 + 1 + 2 BN per channel, 96
    # channels), a 14x14 instead of 7x7 bias table
    assert n_params({"base": "s0", "stride_attention": False}) - s0 == 2 * (8 * (14 * 14 - 7 * 7) - 12 * 96)
    conv_path = 96 * 176 * 9 + 176 + 2 * 176
    assert s0 - n_params({"base": "s0", "downsampling": "attention"}) == conv_path
    attn_path = s0 - n_params({"base": "s0", "downsampling": "conv"})
    down = EfficientFormerV2("s0").stages[3].downsample.attn
    assert attn_path == sum(p.numel() for p in down.parameters())


def test_stage_plans_describe_the_layout():
    plans = stage_plans(224)
    assert [p.grid for p in plans] == [56, 28, 14, 7]
    assert [p.downsample for p in plans] == [None, "conv", "conv", "dual"]
    assert [p.attn_stride for p in plans] == [1, 1, 2, 1] and plans[2].attn_grid == 7
    assert stage_plans(224, stride_attention=False)[2].attn_grid == 14
    assert stage_plans(224, downsampling="conv")[3].downsample == "conv"


@pytest.mark.parametrize("values", list(itertools.product(*SWITCHES.values())),
                         ids=lambda v: "-".join(map(str, v)))
def test_every_combination_builds_runs_at_odd_sizes_and_fuses_with_parity(values):
    switches = dict(zip(SWITCHES, values))
    model = EfficientFormerV2({**TINY, **switches}, num_classes=5, img_size=64).eval()
    assert model.arch.switches == switches
    x = torch.randn(1, 3, 64, 64)
    odd = torch.randn(1, 3, 45, 71)
    with torch.no_grad():
        want, want_odd = model(x), model(odd)
        model.fuse()
        assert (model(x) - want).abs().max() < 1e-4
        assert (model(odd) - want_odd).abs().max() < 1e-4
    feats = EfficientFormerV2({**TINY, **switches}, features_only=True, img_size=64)(odd)
    assert [tuple(f.shape[-2:]) for f in feats] == [(12, 18), (6, 9), (3, 5), (2, 3)]


def test_backward_reaches_every_parameter_with_switches():
    model = EfficientFormerV2({**TINY, "talking_heads": False, "stride_attention": False,
                               "downsampling": "attention"}, num_classes=3, img_size=64)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.export
def test_switched_model_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from deploy.export import export_model
    model = EfficientFormerV2({**TINY, "attention_bias": False, "talking_heads": False, "local_v": False,
                               "stride_attention": False, "downsampling": "conv"}, num_classes=4, img_size=64)
    result = export_model("efficientformerv2_s0", "onnx", tmp_path / "m.onnx", model=model.eval(), size=(64, 64))
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4


def test_bad_switches_are_named_with_the_accepted_values():
    with pytest.raises(ValueError, match=r"unknown architecture keys \['talking_head'\].*talking_heads"):
        Arch.from_dict({"base": "s0", "talking_head": False})
    with pytest.raises(ValueError, match="downsampling='pool'.*'dual', 'attention', 'conv'"):
        Arch.from_dict({"base": "s0", "downsampling": "pool"})
    with pytest.raises(ValueError, match="attention_bias='no'.*True, False"):
        Arch.from_dict({"base": "s0", "attention_bias": "no"})
    with pytest.raises(ValueError, match="unknown EfficientFormerV2 variant 's9'"):
        Arch.from_dict({"base": "s9"})


@pytest.mark.parametrize("bad", [
    {"widths": [32, 48, 96, 176], "expansions": [4, 4, 4, 4]},       # a ratio per stage, not per block
    {"base": "s0", "expansions": [[4, 4], [4, "4"], [4], [4]]},       # a ratio that is not a number
    {"base": "s0", "attention": [0, 0, "two", 2]},
    {"base": "s0", "widths": 32},
])
def test_malformed_architectures_are_value_errors_that_say_what_each_key_takes(bad):
    with pytest.raises(ValueError, match="widths and attention take 4 ints, expansions 4 lists of ratios"):
        Arch.from_dict(bad)
    with pytest.raises(ValueError, match="'base' must be a variant name"):
        Arch.from_dict({"base": 1})


def test_supernet_refuses_switched_architectures_with_a_reason():
    with pytest.raises(ValueError, match="attention_bias.*not searchable"):
        SubnetConfig.from_arch(Arch.from_dict({"base": "s0", "attention_bias": False}))


def test_base_variant_overrides():
    arch = Arch.from_dict({"base": "s2", "attention": [0, 0, 0, 4], "downsampling": "conv"})
    assert arch.widths == VARIANTS["s2"].widths and [s.attention for s in arch.stages] == [0, 0, 0, 4]
    wider = Arch.from_dict({"base": "s0", "widths": [40, 48, 96, 176]})
    assert wider.stem_width == 20  # half the new first width, not the base's stem
