import os
import re
from pathlib import Path

import pytest
import torch

from backbones import create_model

# Two cores: keep intra-op threads low so tests and their subprocesses do not oversubscribe; under
# pytest-xdist (`-n N`) the workers share the cores.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


# The test files that take longest (`--durations`), run first: `make test` hands whole files to two
# pytest-xdist workers in this order (`--dist loadfile --no-loadscope-reorder`), so that no long
# file starts last while the other worker idles. Tests within a file keep their order.
SLOW_FIRST = ("test_latency_lut.py", "test_export_edge.py", "test_export.py", "test_benchmark.py",
              "test_dense_cli.py", "test_classification_training.py", "test_classification_resume.py",
              "test_cli_first_hour.py", "test_search.py", "test_gpu_check.py", "test_segmentation.py",
              "test_supernet_training.py", "test_timm_contract.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as collected


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


ROOT = Path(__file__).resolve().parents[1]

# reference figures, counted on timm's efficientformerv2 models: all parameters at 224 including
# the distillation head, and MACs at 224 (FlopCounterMode / 2)
REFERENCE_PARAMS = {"efficientformerv2_s0": 3_600_256, "efficientformerv2_s1": 6_185_560,
                    "efficientformerv2_s2": 12_710_112, "efficientformerv2_l": 26_322_288}
REFERENCE_GMACS = {"efficientformerv2_s0": 0.396, "efficientformerv2_s1": 0.652,
                   "efficientformerv2_s2": 1.247, "efficientformerv2_l": 2.553}
# parameters of the deploy form (`model.fuse()`: BatchNorm and layer scales folded, the two heads
# merged) at 224 with 1000 classes, as tools/model_profile.py prints them
DEPLOY_PARAMS = {"efficientformerv2_s0": 3_371_960, "efficientformerv2_s1": 5_886_296,
                 "efficientformerv2_s2": 12_293_176, "efficientformerv2_l": 25_730_088}
# stage widths of the variants, and the short names configs use (arch: s0, ...)
WIDTHS = {"efficientformerv2_s0": [32, 48, 96, 176], "efficientformerv2_s1": [32, 48, 120, 224],
          "efficientformerv2_s2": [32, 64, 144, 288], "efficientformerv2_l": [40, 80, 192, 384]}
SHORT_NAMES = {name: name.removeprefix("efficientformerv2_") for name in REFERENCE_PARAMS}
# a tiny architecture (two attention stages) for tests that need any network fast
TINY_ARCH = {"widths": [16, 24, 32, 48], "expansions": [[2], [2], [2, 2], [2, 2]], "attention": [0, 0, 1, 1]}


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights and BatchNorm statistics, so parity is not trivially true."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if not v.dtype.is_floating_point:
                continue
            if k.endswith("running_var"):
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
            else:
                scale = 0.1 if k.endswith(("bias", "gamma", "running_mean", "attention_biases")) else 0.05
                v.copy_(torch.randn(v.shape, generator=g) * scale)
    return model


def _official_layout(timm_sd: dict) -> dict:
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


@pytest.fixture
def one_thread(monkeypatch):
    """Tiny tensors: one intra-op thread is several times faster than two on a busy 2-core box.
    The commands a test runs in this process or as a child (they choose their threads with
    `backbones.threads`, which reads EFV2_THREADS) use one thread too, so that a run and its
    resume in another process compute alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("EFV2_THREADS", "1")
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread_in_tmp(one_thread, tmp_path, monkeypatch):
    """`one_thread` in a temporary working folder (where the commands write their runs), with the
    third-party hints hidden as a user sees them (no EFV2_VERBOSE)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EFV2_VERBOSE", raising=False)
    yield


@pytest.fixture(scope="session")
def randomize_():
    """`randomize_(model)`: random weights and BatchNorm statistics in place (parity tests)."""
    return _randomize


@pytest.fixture(scope="session")
def official_layout():
    """`official_layout(timm_state_dict)`: the snap-research release's key names."""
    return _official_layout


@pytest.fixture(scope="module")
def s0():
    """S0 with 10 classes, random weights and BatchNorm statistics (`_randomize`), so export parity
    is not vacuous (one per test module)."""
    return _randomize(create_model("efficientformerv2_s0", num_classes=10).eval())


@pytest.fixture(scope="module")
def s0_features(s0):
    """The feature extractor of `s0` with its weights."""
    model = create_model("efficientformerv2_s0", features_only=True).eval()
    model.load_state_dict({k: v for k, v in s0.state_dict().items() if not k.startswith(("head", "norm"))})
    return model


@pytest.fixture(scope="module")
def tiny():
    """The tiny architecture (`TINY_ARCH`: the block types of S0, both attention kinds, 6 blocks
    instead of 14) with 10 classes at 64 px and random weights (`_randomize`): what the export
    tests convert where the point is the exporter, not S0 (S0 is converted once per runtime)."""
    from backbones import EfficientFormerV2
    return _randomize(EfficientFormerV2(TINY_ARCH, num_classes=10, img_size=64)).eval()


@pytest.fixture(scope="module")
def tiny_features(tiny):
    """The feature extractor of `tiny` with its weights."""
    from backbones import EfficientFormerV2
    model = EfficientFormerV2(TINY_ARCH, img_size=64, features_only=True).eval()
    model.load_state_dict({k: v for k, v in tiny.state_dict().items() if not k.startswith(("head", "norm"))})
    return model


def synthetic_table(space, img_size: int = 32, num_classes: int = 4, distillation: bool = True):
    """A latency table of `space` whose entries grow with width and expansion (no timing needed):
    what the search tests give the search in place of a measured one."""
    from deploy.latency_lut import LatencyTable, table_entries

    entries = {}
    for key, _, shape in table_entries(space, img_size, num_classes=num_classes, distillation=distillation):
        entries[key] = 0.01 * shape[1] + (0.2 if key.startswith("mhsa") else 0.0) + \
            (0.005 * float(key.split("x")[-1]) * shape[1] if key.startswith("ffn") else 0.0)
    return LatencyTable("synthetic", img_size, 1, entries, space.to_dict(), num_classes=num_classes,
                        distillation=distillation)
