"""Search: frontier legality, greedy search reaching its target, random baseline at the same budget,
MES, BatchNorm recalibration, load_supernet and run_search on a saved checkpoint, the proxy check
end to end; the package's public names, the strictly typed search settings, the depth-and-width
search (Table 9), and the search tools' answers to bad input. (Latency tables:
test_latency_lut.py.)"""
import json
import random
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from backbones import Arch, EfficientFormerV2
from backbones.supernet import EfficientFormerV2Supernet, SearchSpace, StageConfig, SubnetConfig
from classification.proxy import run_proxy_check, spread_configs
from classification.search import (MesSpec, SearchSettings, SettingsError, SubnetEvaluator, Target, arch_dict,
                                   classification_config,
                                   evaluate, fixed_expansion, frontier, greedy_search, load_searched, load_settings,
                                   load_supernet,
                                   plot_trajectory, random_baseline, random_cloud, recalibrate_bn, run_search)
from classification.toy_data import make_toy_classification
from conftest import synthetic_table
from deploy.latency_lut import LatencyTable
from tool_runner import assert_one_line_error as _assert_one_line_error, run_tool

ROOT = Path(__file__).resolve().parents[1]
SEARCH_CONFIGS = ROOT / "configs/search"
TOY_BASE_CONFIG = ROOT / "configs/classification/toy.yaml"

SPACE = SearchSpace(widths=((8, 16), (16,), (16, 24), (24, 32)), depths=(1, 1, 2, 2),
                    expansions=(2, 4), stem_widths=(8,))


def _synthetic_table(space: SearchSpace, img_size: int = 32, num_classes: int = 4) -> LatencyTable:
    """A table whose entries grow with width and expansion (no timing needed)."""
    return synthetic_table(space, img_size, num_classes)


@pytest.fixture(scope="module")
def evaluator():
    torch.manual_seed(0)
    net = EfficientFormerV2Supernet(SPACE, num_classes=4, img_size=32)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 4, (16,), generator=g))]
    return SubnetEvaluator(net, _synthetic_table(SPACE), val=batches, calib=batches, calib_batches=1)


def test_mes_hand_computed():
    mes = MesSpec()
    assert mes(3e6, 1.0) == pytest.approx(100.0)
    assert mes(12e6, 2.0) == pytest.approx(100 * 4 ** -0.5 * 2 ** -1)
    assert mes(0.75e6, 0.5) == pytest.approx(100 * 0.25 ** -0.5 * 0.5 ** -1)   # 400
    custom = MesSpec(u_size=1e6, u_latency=2.0, alpha_size=1.0, alpha_latency=0.5)
    assert custom(4e6, 8.0) == pytest.approx(100 * 4 ** -1 * 4 ** -0.5)


def test_params_from_modules_equal_plain_model(evaluator):
    rng = random.Random(1)
    for config in [SPACE.largest(), SPACE.smallest()] + [SPACE.sample(rng) for _ in range(5)]:
        assert evaluator.count_params(config) == evaluator.supernet.count_params(config)
        assert evaluator.count_params(config) == sum(
            p.numel() for p in evaluator.supernet.extract(config).parameters())


def test_frontier_never_breaks_the_network():
    rng = random.Random(0)
    for config in [SPACE.largest(), SPACE.smallest()] + [SPACE.sample(rng) for _ in range(20)]:
        for action, new in frontier(config, SPACE):
            SPACE.validate(new)   # raises on an empty stage, a width or expansion off the set
            assert all(s.depth >= 1 for s in new.stages), action
            assert new != config
    assert frontier(SPACE.smallest(), SPACE) == []


def test_greedy_search_reaches_target(evaluator, tmp_path):
    start = evaluator.cost(SPACE.largest())[2]
    target = Target(mes=start * 1.3)
    result = greedy_search(evaluator, target)
    assert result.reached and result.reason == "target reached"
    assert result.final.mes >= target.mes
    mes = [s.mes for s in result.steps]
    assert all(b > a for a, b in zip(mes, mes[1:]))            # every action raises the MES
    for step in result.steps:
        config = SubnetConfig.from_dict(step.config)
        SPACE.validate(config)
        assert min(s.depth for s in config.stages) >= 1
    assert result.config == SubnetConfig.from_dict(result.steps[-1].config)
    json.dumps(result.to_dict())                                # the log is plain JSON
    # a parameter target
    params_target = Target(params=evaluator.cost(SPACE.largest())[0] * 0.9)
    by_params = greedy_search(evaluator, params_target)
    assert by_params.reached and by_params.final.params <= params_target.params
    randoms = random_baseline(evaluator, target, count=3, seed=0, tolerance=0.3)
    assert len(randoms) == 3
    for r in randoms:
        assert target.mes <= r["mes"] <= target.mes * 1.3 and 0 <= r["top1"] <= 100
    png = plot_trajectory(result, randoms, tmp_path / "trajectory.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_greedy_search_step_limit_is_its_reason(evaluator):
    result = greedy_search(evaluator, Target(params=1), max_steps=1)
    assert not result.reached and len(result.steps) == 2
    assert result.reason == "step limit reached (max_steps 1)" and "after" not in result.reason


def test_greedy_search_stops_when_target_unreachable(evaluator):
    almost_smallest = SPACE.smallest()
    almost_smallest = SubnetConfig(8, almost_smallest.stages[:3] + (StageConfig(24, (0, 1), (2, 2), 1),))
    result = greedy_search(evaluator, Target(params=1), start=almost_smallest)
    assert not result.reached and "no action" in result.reason
    assert all(evaluator.cost(new)[2] <= result.final.mes for _, new in frontier(result.config, SPACE))


class _TwoPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.unused = nn.BatchNorm2d(4)   # like another width's BatchNorm: not in this forward
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).mean((2, 3)))


def test_recalibration_matches_data_statistics():
    model = _TwoPath()
    data = [(torch.randn(8, 3, 2, 2) * 3 + 1, torch.zeros(8, dtype=torch.long)) for _ in range(3)]
    assert recalibrate_bn(model, data, num_batches=3) == 3
    assert not model.training and model.bn.momentum == 0.1
    with torch.no_grad():
        feats = torch.cat([model.conv(x) for x, _ in data])
    torch.testing.assert_close(model.bn.running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert torch.equal(model.unused.running_mean, torch.zeros(4))
    acc, loss = evaluate(model, data)
    with torch.no_grad():
        expected = 100.0 * (model(torch.cat([x for x, _ in data])).argmax(-1) == 0).float().mean().item()
    assert acc == pytest.approx(expected)
    assert loss > 0


# --------------------------------------------------------------------------------------------
# load_supernet, run_search and the proxy check on a saved checkpoint and a generated folder
# --------------------------------------------------------------------------------------------
NUM_CLASSES = 10   # the toy set's classes


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return make_toy_classification(tmp_path_factory.mktemp("toy"), train_per_class=2, val_per_class=2, size=32)


@pytest.fixture(scope="module")
def supernet_ckpt(tmp_path_factory):
    """A checkpoint written by Lightning for SupernetModule after one training step."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from classification.supernet import SupernetModule

    torch.manual_seed(0)
    module = SupernetModule(space=SPACE.to_dict(), num_classes=NUM_CLASSES, img_size=32, distillation=False,
                            warmup_epochs=0)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    data = TensorDataset(torch.randn(4, 3, 32, 32), torch.arange(4))
    trainer.fit(module, DataLoader(data, batch_size=4))
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path, module.supernet.state_dict()


def test_load_supernet(supernet_ckpt):
    path, state = supernet_ckpt
    net = load_supernet(path)
    assert net.space == SPACE and net.img_size == 32 and net.num_classes == NUM_CLASSES and not net.distillation
    assert not net.training
    loaded = net.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_load_supernet_bad_input(tmp_path, supernet_ckpt):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_supernet(tmp_path / "missing.ckpt")
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="cannot read supernet checkpoint"):
        load_supernet(text)
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        load_supernet(plain)
    ckpt = torch.load(supernet_ckpt[0], weights_only=True)
    classifier = tmp_path / "classifier.ckpt"   # a Lightning checkpoint, but of the plain classifier
    torch.save({**ckpt, "state_dict": {"model.head.weight": torch.zeros(NUM_CLASSES, 32)}}, classifier)
    with pytest.raises(ValueError, match="no supernet weights"):
        load_supernet(classifier)


def _settings(**search) -> dict:
    return {"mes": {}, "search": {"target": {"mes_factor": 1.3}, "batch_size": 20, "calib_batches": 1, **search},
            "random": {"count": 2, "tolerance": 0.5, "seed": 0},
            "base_config": str(TOY_BASE_CONFIG)}


def test_run_search_writes_its_outputs(supernet_ckpt, toy_root, tmp_path):
    supernet = load_supernet(supernet_ckpt[0])
    table = _synthetic_table(SPACE, img_size=32, num_classes=NUM_CLASSES)
    found = run_search(supernet, toy_root, table, _settings(), tmp_path, log=lambda _: None)
    largest_mes = found["evaluator"].cost(SPACE.largest())[2]
    log = json.loads((tmp_path / "search.json").read_text())
    assert log["reached"] and log["reason"] == "target reached"
    assert log["steps"][-1]["mes"] >= 1.3 * largest_mes == pytest.approx(log["target"]["mes"])
    assert all(0 <= s["top1"] <= 100 for s in log["steps"]) and log["steps"][0]["action"] == "start"
    config = yaml.safe_load((tmp_path / "searched.yaml").read_text())
    assert "model_name" not in config["model"] and config["model"]["lr"] > 0   # arch replaces the name
    assert config["checkpoint"]["dirpath"] == str(tmp_path / "train" / "checkpoints")  # not the base's run folder
    arch = config["model"]["arch"]
    assert arch == arch_dict(SubnetConfig.from_dict(log["config"]))
    net = EfficientFormerV2(Arch.from_dict(arch), num_classes=NUM_CLASSES, distillation=False, img_size=32).eval()
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, NUM_CLASSES)
    assert sum(p.numel() for p in net.parameters()) == log["steps"][-1]["params"]
    # the training size is the search's (the base config's is 64), and the record of the network
    # is what every tool builds: the count the search reported
    assert config["data"]["img_size"] == 32
    assert log["network"] == {"arch": arch, "img_size": 32, "num_classes": NUM_CLASSES, "distillation": False,
                              "params": log["steps"][-1]["params"]}
    for written in ("search.json", "searched.yaml"):
        network = load_searched(tmp_path / written)
        assert (network.arch, network.img_size, network.num_classes, network.distillation) == (arch, 32, NUM_CLASSES,
                                                                                              False), written
        assert sum(p.numel() for p in network.build().parameters()) == log["steps"][-1]["params"], written
    randoms = json.loads((tmp_path / "random.json").read_text())
    assert len(randoms["at_budget"]) == 2
    assert all(log["steps"][-1]["mes"] <= r["mes"] <= 1.5 * log["steps"][-1]["mes"] for r in randoms["at_budget"])
    assert (tmp_path / "trajectory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_searched_config_is_self_contained_from_a_variant_overlay(tmp_path):
    """A variant config includes the recipe (`config: imagenet.yaml`) and sets dotted keys: the
    searched network's config has them merged in, so it parses wherever it is written."""
    import sys
    from unittest import mock

    from classification.__main__ import ClassificationCLI
    from classification.data import ImageNetDataModule
    from classification.module import ImageClassifier

    subnet = SPACE.smallest()
    config = classification_config(subnet, ROOT / "configs/classification/efficientformerv2_s0.yaml",
                                   run_dir=tmp_path / "train", img_size=32)
    assert "config" not in config and not any("." in key for key in config)
    assert "model_name" not in config["model"] and config["model"]["arch"] == arch_dict(subnet)
    assert config["trainer"]["accelerator"] == "gpu" and config["data"]["img_size"] == 32   # the recipe's, the search's
    (tmp_path / "searched.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    class ParseOnly(ClassificationCLI):
        def instantiate_classes(self) -> None:
            pass

    with mock.patch.object(sys, "argv", ["classification"]):
        parsed = ParseOnly(ImageClassifier, ImageNetDataModule, auto_configure_optimizers=False, run=False,
                           args=["--config", str(tmp_path / "searched.yaml"), "--data.root", "unused"]).config
    assert parsed.model.arch == arch_dict(subnet) and parsed.data.img_size == 32


def test_run_search_refuses_a_table_of_another_size(supernet_ckpt, toy_root, tmp_path):
    table = _synthetic_table(SPACE, img_size=64, num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="built at 64px, the supernet at 32px"):
        run_search(load_supernet(supernet_ckpt[0]), toy_root, table, _settings(), tmp_path, log=lambda _: None)


def test_spread_configs_cover_the_space():
    size = SubnetEvaluator(EfficientFormerV2Supernet(SPACE, num_classes=4, img_size=32), None, [], []).count_params
    configs = spread_configs(SPACE, 6, size, seed=0)
    sizes = [size(c) for c in configs]
    assert configs[0] == SPACE.smallest() and configs[-1] == SPACE.largest()
    assert len(set(configs)) == 6 and sizes == sorted(sizes)
    assert sizes[1] < sizes[-2]                                  # the random ones are spread, not one size
    with pytest.raises(ValueError, match="at least 3"):
        spread_configs(SPACE, 2, size)


def test_proxy_check_end_to_end(supernet_ckpt, toy_root, tmp_path):
    overrides = {"data.num_workers": 0, "data.batch_size": 10, "trainer.limit_train_batches": 1}
    result = run_proxy_check(supernet_ckpt[0], toy_root, tmp_path, TOY_BASE_CONFIG, count=3, epochs=1, batch_size=20,
                             calib_batches=1, overrides=overrides, log=lambda _: None)
    saved = json.loads((tmp_path / "proxy.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert len(saved["inherited"]) == len(saved["standalone"]) == len(saved["params"]) == 3
    assert all(0 <= a <= 100 for a in saved["inherited"] + saved["standalone"])
    assert all(a % 5 == 0 for a in saved["inherited"] + saved["standalone"])   # 20 val images: steps of 5%
    assert saved["params"] == sorted(saved["params"]) and saved["epochs"] == 1
    assert -1 <= saved["pearson_r"] <= 1 and saved["pearson_r2"] == pytest.approx(saved["pearson_r"] ** 2)
    assert -1 <= saved["kendall_tau"] <= 1
    assert SubnetConfig.from_dict(saved["configs"][0]) == SPACE.smallest()
    assert SubnetConfig.from_dict(saved["configs"][-1]) == SPACE.largest()
    standalone = yaml.safe_load((tmp_path / "standalone0" / "standalone.yaml").read_text())
    assert standalone["model"]["arch"] == saved["archs"][0] and standalone["trainer"]["max_epochs"] == 1
    assert (tmp_path / "standalone0" / "config.yaml").is_file()       # the CLI writes below the work folder
    assert (tmp_path / "proxy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# The package's public names
# --------------------------------------------------------------------------------------------
def test_package_exports_its_public_names():
    import classification.search as search

    assert len(set(search.__all__)) == len(search.__all__)
    for name in search.__all__:
        obj = getattr(search, name)
        if callable(obj):
            assert obj.__module__.startswith("classification.search."), name
    # every name the repository imports from the package today
    used = {"MesSpec", "SubnetEvaluator", "Target", "arch_dict", "evaluate", "frontier", "greedy_search",
            "load_supernet", "plot_trajectory", "random_baseline", "recalibrate_bn", "run_search", "image_batches",
            "ProxyReport", "proxy_correlation", "classification_config", "Action", "SearchStep", "SearchResult",
            "random_cloud", "sample_at_budget", "SearchedNetwork", "load_searched"}
    assert used <= set(search.__all__)


def test_proxy_does_not_import_the_cli_entry_module():
    import ast

    import classification.proxy as proxy

    imported = set()
    for node in ast.walk(ast.parse(Path(proxy.__file__).read_text())):
        if isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not any(name.endswith("__main__") for name in imported), imported


def test_proxy_check_needs_an_existing_base_config(tmp_path):
    """The proxy check assumes no source checkout: the caller passes the base config; a missing
    one is refused at once (before the supernet is even read)."""
    with pytest.raises(FileNotFoundError, match="base config .*missing.yaml.* does not exist"):
        run_proxy_check(tmp_path / "no.ckpt", tmp_path, tmp_path / "out", tmp_path / "missing.yaml",
                        log=lambda _: None)


# --------------------------------------------------------------------------------------------
# Settings: typed, strict, with inheritance
# --------------------------------------------------------------------------------------------
def test_shipped_search_configs_load():
    toy = load_settings(SEARCH_CONFIGS / "search_toy.yaml")
    assert toy.search.target.mes_factor == 2.0 and toy.search.expansions == "joint"
    assert toy.search.calib_batches == 2 and toy.search.max_images is None and toy.random.count == 8
    assert toy.lut.backend == "torch" and toy.lut.check_subnets == 8
    assert toy.base_config == "configs/classification/toy.yaml"
    imagenet = load_settings(SEARCH_CONFIGS / "search_imagenet.yaml")
    assert imagenet.search.target.params == 3.6e6 and imagenet.search.cache is False
    assert imagenet.lut.backend == "onnxruntime" and imagenet.random.cloud == 20
    # Table 9: depth and width only, otherwise the toy search
    depth_width = load_settings(SEARCH_CONFIGS / "search_toy_depth_width.yaml")
    assert depth_width == replace(toy, search=replace(toy.search, expansions="fixed"))
    # Table 10: the paper's alphas (latency 1.0, size 0.5) and the two other rows
    assert (toy.mes.alpha_latency, toy.mes.alpha_size) == (1.0, 0.5) == (MesSpec().alpha_latency, MesSpec().alpha_size)
    for name, alphas in (("search_toy_mes_lat1.0_size1.0.yaml", (1.0, 1.0)),
                         ("search_toy_mes_lat0.5_size1.0.yaml", (0.5, 1.0))):
        row = load_settings(SEARCH_CONFIGS / name)
        assert (row.mes.alpha_latency, row.mes.alpha_size) == alphas
        assert row == replace(toy, mes=replace(toy.mes, alpha_latency=alphas[0], alpha_size=alphas[1]))
    assert MesSpec(alpha_size=1.0)(6e6, 1.0) == pytest.approx(50.0)   # size weighs more: 100 * 2^-1


def test_settings_defaults():
    settings = SearchSettings.from_dict({"search": {"target": {"mes": 10}}})
    assert settings.mes == MesSpec() and settings.search.expansions == "joint"
    assert (settings.search.split, settings.search.calib_split, settings.search.batch_size) == ("val", "train", 100)
    assert (settings.random.count, settings.random.tolerance, settings.base_config) == (10, 0.1, None)
    assert SearchSettings.from_dict({"search": {"target": {"params": "1e6"}}}).search.target.params == 1e6  # YAML 1.1


@pytest.mark.parametrize("data, key, accepted", [
    ({"serach": {}}, "serach", "search, lut, mes, random, base_config"),
    ({"search": {"target": {"mes": 1}, "batchsize": 10}}, "search.batchsize", "target, expansions, split"),
    ({"search": {"target": {"mes_factr": 2}}}, "search.target.mes_factr", "params, latency_ms, mes, mes_factor"),
    ({"search": {"target": {"mes": 1}}, "mes": {"alpha_sise": 1.0}}, "mes.alpha_sise",
     "u_size, u_latency, alpha_size, alpha_latency"),
    ({"search": {"target": {"mes": 1}}, "random": {"counts": 3}}, "random.counts", "count, tolerance, cloud, seed"),
    ({"search": {"target": {"mes": 1}}, "lut": {"check": 3}}, "lut.check", "backend, threads, warmup, runs"),
])
def test_unknown_setting_is_an_error_naming_it(data, key, accepted):
    with pytest.raises(SettingsError, match=f"unknown key '{key}'; accepted keys.*: {accepted}"):
        SearchSettings.from_dict(data)


@pytest.mark.parametrize("data, message", [
    ({}, "missing key 'search'"),
    ({"search": {}}, "missing key 'search.target'"),
    ({"search": {"target": {}}}, "search.target needs one of params, latency_ms, mes, mes_factor"),
    ({"search": {"target": {"mes": 1, "mes_factor": 2}}}, "mes or mes_factor, not both"),
    ({"search": {"target": {"mes": "high"}}}, "search.target.mes must be a number, got 'high'"),
    ({"search": {"target": {"mes": 1}, "batch_size": 2.5}}, "search.batch_size must be an integer"),
    ({"search": {"target": {"mes": 1}, "batch_size": 0}}, "search.batch_size must be positive"),
    ({"search": {"target": {"mes": 1}, "cache": "yes"}}, "search.cache must be true or false"),
    ({"search": {"target": {"mes": 1}, "expansions": "both"}}, "search.expansions must be one of joint, fixed"),
    ({"search": {"target": {"mes": 1}}, "mes": {"alpha_size": 2.0}}, r"mes.alpha_size must lie in \(0, 1\]"),
    ({"search": {"target": {"mes": 1}}, "lut": {"backend": "tflite"}}, "lut.backend must be one of torch, onnxruntime, executorch, openvino, litert; got 'tflite'"),
    ({"search": {"target": {"mes": 1}}, "random": [1, 2]}, "random must be a mapping"),
])
def test_bad_setting_value_is_an_error_naming_the_key(data, message):
    with pytest.raises(SettingsError, match=message):
        SearchSettings.from_dict(data)


def test_settings_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: " + str(SEARCH_CONFIGS / "search_toy.yaml") + "\nsearch:\n  calib_batchs: 3\n")
    with pytest.raises(SettingsError, match=r"bad.yaml: unknown key 'search.calib_batchs'; accepted keys of search"):
        load_settings(bad)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(SettingsError, match="extends itself"):
        load_settings(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml' does not exist"):
        load_settings(tmp_path / "c.yaml")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")


def test_run_search_refuses_an_unknown_setting(supernet_ckpt, toy_root, tmp_path):
    table = _synthetic_table(SPACE, img_size=32, num_classes=NUM_CLASSES)
    settings = _settings(calib_batchs=1)
    with pytest.raises(SettingsError, match="unknown key 'search.calib_batchs'"):
        run_search(load_supernet(supernet_ckpt[0]), toy_root, table, settings, tmp_path, log=lambda _: None)
    assert not (tmp_path / "search.json").exists()


# --------------------------------------------------------------------------------------------
# Table 9: depth and width only (fixed expansions) next to the joint search
# --------------------------------------------------------------------------------------------
def _expansions(config: SubnetConfig) -> list[tuple[float, ...]]:
    return [s.expansions for s in config.stages]


def test_fixed_frontier_never_changes_an_expansion():
    rng = random.Random(0)
    for config in [SPACE.largest()] + [SPACE.sample(rng) for _ in range(20)]:
        joint = frontier(config, SPACE)
        fixed = frontier(config, SPACE, expansions="fixed")
        assert fixed == [(a, c) for a, c in joint if a.kind != "shrink_expansion"]
        for action, new in fixed:
            kept = {(j, b): e for j, s in enumerate(new.stages) for b, e in zip(s.blocks, s.expansions)}
            before = {(j, b): e for j, s in enumerate(config.stages) for b, e in zip(s.blocks, s.expansions)}
            assert all(before[k] == e for k, e in kept.items()), action
    assert any(a.kind == "shrink_expansion" for a, _ in frontier(SPACE.largest(), SPACE))
    with pytest.raises(ValueError, match="unknown expansions mode 'both'"):
        frontier(SPACE.largest(), SPACE, expansions="both")


def test_fixed_search_keeps_expansions_joint_search_changes_them(evaluator):
    # a start whose only MES-raising moves are expansion shrinks (one block per stage, smallest
    # widths, no MHSA): the joint search must shrink an expansion, the fixed one cannot move
    start = SubnetConfig(8, tuple(StageConfig(w[0], (0,), (4,), 0) for w in SPACE.widths))
    target = Target(mes=evaluator.cost(start)[2] * 1.0001)
    joint = greedy_search(evaluator, target, start=start)
    assert joint.reached and any(e != (4,) for e in _expansions(joint.config))
    fixed = greedy_search(evaluator, target, start=start, expansions="fixed")
    assert not fixed.reached and "no action" in fixed.reason and fixed.config == start
    # from the largest sub-network: every step keeps every block at the largest ratio
    assert fixed_expansion(SPACE) == 4
    largest_mes = evaluator.cost(SPACE.largest())[2]
    result = greedy_search(evaluator, Target(mes=largest_mes * 1.15), expansions="fixed")
    assert result.reached and len(result.steps) > 1
    for step in result.steps:
        assert all(set(e) == {4} for e in _expansions(SubnetConfig.from_dict(step.config))), step.action
    # the random baseline draws from the same depth-and-width space
    budget = Target(mes=result.final.mes)
    for r in random_baseline(evaluator, budget, count=2, seed=0, tolerance=0.5, expansions="fixed") + \
            random_cloud(evaluator, 3, seed=1, expansions="fixed"):
        assert all(set(e) == {4} for e in _expansions(SubnetConfig.from_dict(r["config"])))


def test_run_search_with_fixed_expansions(supernet_ckpt, toy_root, tmp_path):
    table = _synthetic_table(SPACE, img_size=32, num_classes=NUM_CLASSES)
    run_search(load_supernet(supernet_ckpt[0]), toy_root, table, _settings(expansions="fixed"), tmp_path,
               log=lambda _: None)
    log = json.loads((tmp_path / "search.json").read_text())
    assert log["settings"]["search"]["expansions"] == "fixed" and log["reached"]
    for step in log["steps"]:
        assert all(set(s["expansions"]) == {4} for s in step["config"]["stages"])
    randoms = json.loads((tmp_path / "random.json").read_text())["at_budget"]
    assert all(set(s["expansions"]) == {4} for r in randoms for s in r["config"]["stages"])


# --------------------------------------------------------------------------------------------
# The search tools answer bad input with one line and exit status 2
# --------------------------------------------------------------------------------------------
def _tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return run_tool(name.removesuffix(".py"), *args, cwd=ROOT)


@pytest.fixture(scope="module")
def toy_lut(tmp_path_factory):
    return _synthetic_table(SPACE, img_size=32, num_classes=NUM_CLASSES).save(tmp_path_factory.mktemp("lut") / "lut.json")


def _typo_config(tmp_path: Path) -> Path:
    path = tmp_path / "typo.yaml"
    path.write_text(f"extends: {SEARCH_CONFIGS / 'search_toy.yaml'}\nrandom:\n  tolerence: 0.2\n")
    return path


def test_search_tool_bad_input(supernet_ckpt, toy_root, toy_lut, tmp_path):
    common = ("--lut", toy_lut, "--out", tmp_path / "out")
    _assert_one_line_error(_tool("search.py", "--checkpoint", tmp_path / "none.ckpt", "--data", toy_root, *common),
                           "search", "none.ckpt", "does not exist")
    _assert_one_line_error(_tool("search.py", "--checkpoint", supernet_ckpt[0], "--data", tmp_path / "nodata",
                                 *common), "search", "nodata", "no such folder")
    _assert_one_line_error(_tool("search.py", "--checkpoint", supernet_ckpt[0], "--data", toy_root, *common,
                                 "--config", _typo_config(tmp_path)), "search", "'random.tolerence'",
                           "count, tolerance, cloud, seed")
    assert not (tmp_path / "out").exists()


def test_proxy_tool_bad_input(supernet_ckpt, toy_root, tmp_path):
    out = ("--out", tmp_path / "out")
    _assert_one_line_error(_tool("proxy_correlation.py", "--checkpoint", tmp_path / "none.ckpt", "--data", toy_root,
                                 *out), "proxy_correlation", "none.ckpt", "does not exist")
    _assert_one_line_error(_tool("proxy_correlation.py", "--checkpoint", supernet_ckpt[0], "--data",
                                 tmp_path / "nodata", *out), "proxy_correlation", "nodata", "no such folder")
    _assert_one_line_error(_tool("proxy_correlation.py", "--checkpoint", supernet_ckpt[0], "--data", toy_root,
                                 "--base-config", tmp_path / "nobase.yaml", *out), "proxy_correlation", "nobase.yaml",
                           "does not exist")


def test_demo_search_tool_bad_input(tmp_path):
    out = ("--data", tmp_path / "data", "--out", tmp_path / "out")
    _assert_one_line_error(_tool("demo_search.py", *out, "--search-config", _typo_config(tmp_path)), "demo_search",
                           "'random.tolerence'", "accepted keys of random")
    supernet_config = tmp_path / "supernet.yaml"
    supernet_config.write_text((SEARCH_CONFIGS / "supernet_toy.yaml").read_text().replace("num_random:", "num_randm:"))
    _assert_one_line_error(_tool("demo_search.py", *out, "--supernet-config", supernet_config), "demo_search",
                           "num_randm")
    assert not (tmp_path / "data").exists()     # nothing was generated or trained
