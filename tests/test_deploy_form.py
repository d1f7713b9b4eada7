"""The deploy form as a protocol: every part's `fuse()` returns the module to use in its place
(timm's `reparameterize_model` gives the same outputs as `model.fuse()`), and fused weights can
be saved and loaded back without the training form."""
import copy

import pytest
import torch
from timm.utils.model import reparameterize_model

from backbones import (CheckpointError, EfficientFormerV2, create_model, is_deploy_state_dict, load_checkpoint,
                       save_checkpoint)

from conftest import TINY_ARCH as TINY


def _trained_like(model: EfficientFormerV2) -> EfficientFormerV2:
    """Non-trivial BatchNorm statistics and layer scales, so folding them is tested."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
        for name, p in model.named_parameters():
            if name.endswith("gamma") or "attention_biases" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("arch", ["s0", TINY])
def test_timm_reparameterize_model_equals_fuse(arch):
    model = _trained_like(EfficientFormerV2(arch, num_classes=10, img_size=64 if arch is TINY else 224))
    size = 64 if arch is TINY else 224
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = model(x)
        by_timm = reparameterize_model(model)           # a fused copy
        ours = copy.deepcopy(model).fuse()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in by_timm.stages.modules())
        assert (by_timm(x) - want).abs().max() < 1e-4
        assert (by_timm(x) - ours(x)).abs().max() < 1e-4


def test_fuse_is_idempotent():
    model = _trained_like(EfficientFormerV2(TINY, num_classes=4, img_size=64))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        once = model.fuse()(x)
        assert torch.equal(model.fuse()(x), once)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_deploy_form_checkpoint_round_trip(tmp_path, suffix):
    trained = _trained_like(EfficientFormerV2("s0", num_classes=10))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        want = trained(x)
    fused = copy.deepcopy(trained).fuse()
    path = save_checkpoint(fused, tmp_path / f"s0_deploy{suffix}")
    assert is_deploy_state_dict(fused.state_dict()) and not is_deploy_state_dict(trained.state_dict())
    # smaller than the training form: no BatchNorm, no second head
    assert len(fused.state_dict()) < len(trained.state_dict())
    # a fresh training-form model takes the fused weights by becoming the deploy form
    model = create_model("efficientformerv2_s0", num_classes=10, distillation=False)
    report = load_checkpoint(model, path)
    assert report.fused and model.is_fused and report.ok
    with torch.no_grad():
        assert (model(x) - want).abs().max() < 1e-4
        # other input sizes still work (the bias tables are kept)
        assert model(torch.randn(1, 3, 160, 192)).shape == (1, 10)


def test_fused_weights_refresh_the_precomputed_biases(tmp_path):
    """The deploy form precomputes the attention biases at the training grid (non-persistent
    buffers): loading other fused weights must compute them anew, feature for feature."""
    x = torch.randn(1, 3, 224, 224)
    source = _trained_like(EfficientFormerV2("s0", num_classes=10)).fuse()
    with torch.no_grad():
        for name, p in source.named_parameters():
            if "attention_biases" in name:
                p.normal_(0, 1.0)
        source.refresh_deploy_caches()
        want = source.forward_features(x)
    for target in (EfficientFormerV2("s0", num_classes=10).eval(),           # becomes the deploy form
                   EfficientFormerV2("s0", num_classes=10).eval().fuse()):   # already is
        load_checkpoint(target, save_checkpoint(source, tmp_path / "fused.safetensors"))
        with torch.no_grad():
            assert (target.forward_features(x) - want).abs().max() < 1e-5


def test_headless_deploy_form_reloads_and_fuse_keeps_dtype(tmp_path):
    """Without a head the final norm has nothing to fold into and stays: still the deploy form."""
    headless = _trained_like(EfficientFormerV2(TINY, num_classes=0, img_size=64)).fuse()
    assert headless.is_fused and is_deploy_state_dict(headless.state_dict())
    # with a head, the final norm is folded by fuse(): timm's reparameterize_model, which leaves it,
    # is not the deploy form (its weights load only into the training form)
    partly = reparameterize_model(_trained_like(EfficientFormerV2(TINY, num_classes=4, img_size=64)))
    assert not partly.is_fused and not is_deploy_state_dict(partly.state_dict())
    x = torch.randn(2, 3, 64, 80)
    model = EfficientFormerV2(TINY, num_classes=0, img_size=64)
    assert load_checkpoint(model, save_checkpoint(headless, tmp_path / "headless.pth")).fused
    with torch.no_grad():
        assert (model(x) - headless(x)).abs().max() < 1e-6
    double = _trained_like(EfficientFormerV2(TINY, num_classes=4, img_size=64)).double()
    with torch.no_grad():
        want = double(x.double())
        assert (double.fuse()(x.double()) - want).abs().max() < 1e-10
    double.reset_classifier(3)
    assert double.head.weight.dtype == torch.float64


def test_training_weights_into_a_fused_model_are_refused(tmp_path):
    path = save_checkpoint(EfficientFormerV2(TINY, num_classes=4, img_size=64), tmp_path / "train.pth")
    fused = EfficientFormerV2(TINY, num_classes=4, img_size=64).fuse()
    with pytest.raises(CheckpointError, match="deploy form.*load the checkpoint first, then call fuse"):
        load_checkpoint(fused, path)
