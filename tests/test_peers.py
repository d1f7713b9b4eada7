"""The peers side by side (deploy.peers, tools/benchmark_peers.py): the table of models and figures,
the interleaved measurement with failures set aside, the Pareto plot, the tool's files."""
import math

import pytest
import timm
from torch import nn

from backbones import list_models
from deploy import peers as peers_mod
from deploy.benchmark import read_records
from deploy.peers import (FAMILIES, PEERS, Peer, measure_peers, pareto_front, plot_pareto, select_peers)
from tool_runner import run_tool

REQUIRED_FAMILIES = {"EfficientFormerV2", "MobileNetV2", "MobileNetV4", "RepViT", "FastViT", "EfficientViT (MIT)",
                     "EfficientViT (Microsoft)", "SwiftFormer", "SHViT", "StarNet", "MobileOne", "GhostNetV3",
                     "TinyViT"}


def test_peer_table_names_sources_and_native_resolutions():
    assert REQUIRED_FAMILIES <= set(FAMILIES)
    names = [p.name for p in PEERS]
    assert len(set(names)) == len(names)
    assert {"mobilenetv4_conv_small", "mobilenetv4_conv_medium", "mobilenetv4_hybrid_medium"} <= set(names)
    assert {n for n in names if n.startswith("efficientformerv2")} == set(list_models())
    timm_models = set(timm.list_models())
    for p in PEERS:
        assert 60 < p.top1 < 90 and p.source, p
        if p.tag is None:
            assert p.resolution == 224
            continue
        assert p.name in timm_models, p.name
        cfg = timm.models.get_pretrained_cfg(p.timm_name, allow_unregistered=False)
        assert cfg is not None, f"timm has no weights {p.timm_name}"
        # the figure is of the tag's own resolution: its native input size
        assert cfg.input_size[-1] == p.resolution, (p.timm_name, cfg.input_size)
        assert cfg.num_classes == 1000, p.timm_name
        if "ImageNet-1K only" not in p.source:  # else timm's default tag of the architecture
            default = timm.models.get_pretrained_cfg(p.name)
            assert default.tag == p.tag, (p.name, default.tag, p.tag)


def test_select_peers():
    assert select_peers() == list(PEERS)
    got = select_peers(["efficientformerv2_s0"], ["fastvit"])
    assert [p.name for p in got][0] == "efficientformerv2_s0"
    assert {p.family for p in got} == {"EfficientFormerV2", "FastViT"}
    assert {p.family for p in select_peers(families=["efficientvit"])} == {"EfficientViT (MIT)",
                                                                          "EfficientViT (Microsoft)"}
    with pytest.raises(ValueError, match="unknown peer"):
        select_peers(["resnet9000"])
    with pytest.raises(ValueError, match="unknown family"):
        select_peers(families=["LeNet"])


def test_pareto_front():
    # (latency, top-1): 1 beats 3 (faster, as accurate); 4 ties 0 on latency but is less accurate
    points = [(1.0, 70.0), (2.0, 75.0), (3.0, 74.0), (2.5, 75.0), (1.0, 69.0), (5.0, 80.0)]
    assert pareto_front(points) == [0, 1, 5]
    assert pareto_front([]) == []


def _record(model, backend="torch", latency=1.0, top1=None, family=None):
    return {"model": model, "backend": backend, "precision": "fp32", "batch_size": 1, "threads": 1,
            "resolution": 224, "latency_ms_median": latency, "latency_ms_p90": latency, "params": 1, "gmacs": 0.1,
            "mes": 1.0, "top1": top1, "top1_paper": top1, "family": family, "max_abs_diff": None}


def test_plot_pareto(tmp_path):
    records = [_record("efficientformerv2_s0", latency=2.0, top1=76.1, family="EfficientFormerV2"),
               _record("efficientformerv2_s1", latency=3.0, top1=79.7, family="EfficientFormerV2"),
               _record("mobilenetv2_100", latency=1.5, top1=72.9, family="MobileNetV2"),
               _record("starnet_s1", latency=2.5, top1=73.5, family="StarNet")]
    failures = [{"model": "tiny_vit_5m_224", "backend": "torch", "resolution": 224, "reason": "x"}]
    path = plot_pareto(records, tmp_path / "p.png", "torch", failures)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no records"):
        plot_pareto(records, tmp_path / "q.png", "openvino")


def _build_fails(monkeypatch, name: str, reason: str) -> None:
    """Building the peer `name` raises RuntimeError(reason); the others build as usual."""
    real_build = peers_mod.build_peer

    def build(p):
        if p.name == name:
            raise RuntimeError(reason)
        return real_build(p)
    monkeypatch.setattr(peers_mod, "build_peer", build)


def test_two_tiny_models_on_torch_and_a_model_that_cannot_be_built(monkeypatch):
    """The real run_benchmark on the torch backend, each model at its own resolution (two
    groups), and a third model whose build fails: it is listed with the reason, the others are
    measured."""
    tiny = [Peer("efficientformerv2_s0", "EfficientFormerV2", None, 64, 76.1, "test figure"),
            Peer("mobilenetv2_050", "MobileNetV2", "lamb_in1k", 96, 65.9, "test figure"),
            Peer("broken_net", "Broken", "in1k", 64, 70.0, "test figure")]
    _build_fails(monkeypatch, "broken_net", "no such architecture")
    lines = []
    records, failures = measure_peers(tiny, ["torch"], threads=1, runs=2, warmup=1, log=lines.append)
    assert [(r["model"], r["resolution"]) for r in records] == [("efficientformerv2_s0", 64), ("mobilenetv2_050", 96)]
    for r in records:
        assert r["backend"] == "torch" and r["latency_ms_median"] > 0 and r["threads"] == 1
        assert r["top1"] == r["top1_paper"] and r["top1_source"] == "test figure"
        assert r["peer_group"] == f"torch@{r['resolution']}px"
    assert records[1]["tag"] == "lamb_in1k" and records[1]["family"] == "MobileNetV2"
    assert len(failures) == 1
    assert failures[0]["model"] == "broken_net" and failures[0]["backend"] == "torch"
    assert "no such architecture" in failures[0]["reason"]


def _fake_peers(monkeypatch, names, prepare_fails=lambda label: False, measure_fails=False):
    """Peers that build as a small conv net; `prepare` (the real one) raises for the labels
    `prepare_fails` names, `measure` (the real one) raises when `measure_fails`. Returns the
    peers and the list of calls made: ("prepare", label) and ("measure", [labels])."""
    monkeypatch.setattr(peers_mod, "build_peer", lambda p: nn.Conv2d(3, 4, 3))
    calls = []
    real_prepare, real_measure = peers_mod.prepare, peers_mod.measure

    def prepare(subject, runtime, workdir):
        calls.append(("prepare", subject.label))
        if prepare_fails(subject.label):
            raise RuntimeError(f"cannot export {subject.label}: unsupported operator")
        return real_prepare(subject, "torch", workdir)

    def measure(entries, runs, warmup, log):
        calls.append(("measure", [e.subject.label for e in entries]))
        if measure_fails:
            raise RuntimeError("the runtime crashed while running")
        return real_measure(entries, runs, warmup, log=log)
    monkeypatch.setattr(peers_mod, "prepare", prepare)
    monkeypatch.setattr(peers_mod, "measure", measure)
    return [Peer(n, "Fake", "in1k", 32, 70.0 + i, "test") for i, n in enumerate(names)], calls


def test_export_failure_is_put_down_to_the_model_being_prepared(monkeypatch):
    peers, calls = _fake_peers(monkeypatch, ["net_a", "net_bad", "net_c"], lambda label: label == "net_bad")
    records, failures = measure_peers(peers, ["onnxruntime"], runs=2, warmup=1)
    assert [r["model"] for r in records] == ["net_a", "net_c"]
    assert [(f["model"], f["backend"]) for f in failures] == [("net_bad", "onnxruntime")]
    assert "unsupported operator" in failures[0]["reason"]
    # each model prepared once, the survivors measured together once: no retries
    assert calls == [("prepare", "net_a"), ("prepare", "net_bad"), ("prepare", "net_c"),
                     ("measure", ["net_a", "net_c"])]


def test_failure_while_measuring_lists_every_model_of_the_group(monkeypatch):
    peers, calls = _fake_peers(monkeypatch, ["net_a", "net_b"], measure_fails=True)
    records, failures = measure_peers(peers, ["openvino"], runs=2, warmup=1)
    assert records == [] and [f["model"] for f in failures] == ["net_a", "net_b"]
    assert all("crashed" in f["reason"] and "32 px group" in f["reason"] for f in failures)
    assert [c for c in calls if c[0] == "measure"] == [("measure", ["net_a", "net_b"])]


def test_a_runtime_that_takes_no_model_lists_every_one(monkeypatch):
    peers, calls = _fake_peers(monkeypatch, ["net_a", "net_b"], lambda label: True)
    records, failures = measure_peers(peers, ["executorch"])
    assert records == [] and [f["model"] for f in failures] == ["net_a", "net_b"]
    assert not [c for c in calls if c[0] == "measure"]


def test_tool_lists_and_measures(tmp_path):
    listed = run_tool("benchmark_peers", "--list", "--families", "SwiftFormer")
    assert listed.returncode == 0, listed.stderr
    assert "swiftformer_xs" in listed.stdout and "results-imagenet.csv" in listed.stdout
    bad = run_tool("benchmark_peers", "--list", "--families", "LeNet")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "LeNet" in bad.stderr

    out = tmp_path / "records"
    got = run_tool("benchmark_peers", "--runtimes", "torch", "--models", "efficientformerv2_s0", "starnet_s1",
                   "--runs", "2", "--warmup", "0", "--out-dir", out)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip().splitlines()[-1].startswith("benchmark_peers: 2 records of 2/2 models on torch")
    records = read_records(out / "peers_torch.json")
    assert [r["model"] for r in records] == ["efficientformerv2_s0", "starnet_s1"]
    for r in records:
        assert "tools/benchmark_peers.py" in r["command"] and r["date"] and r["cpu"]
        assert math.isfinite(r["latency_ms_median"]) and r["top1"] > 70
    assert (out / "peers_torch.png").stat().st_size > 0
    assert not list(out.glob("*.md"))  # the records page is the one table (make records)
    # the records page reads the file with its provenance and shows the plot beside it
    from deploy.records import load_record_dir, render_page
    page = render_page(load_record_dir(out))
    assert "peers torch" in page and "peers_torch.png" in page


def test_tool_writes_the_models_a_runtime_cannot_take_into_its_records(monkeypatch, tmp_path):
    _build_fails(monkeypatch, "starnet_s1", "no kernel for this operator")
    out = tmp_path / "records"
    got = run_tool("benchmark_peers", "--runtimes", "torch", "--models", "efficientformerv2_s0", "starnet_s1",
                   "--runs", "2", "--warmup", "0", "--out-dir", out)
    assert got.returncode == 0, got.stderr
    records = read_records(out / "peers_torch.json")
    assert [(r["model"], r["latency_ms_median"] is None) for r in records] == [
        ("efficientformerv2_s0", False), ("starnet_s1", True)]
    assert "no kernel for this operator" in records[1]["note"] and records[1]["command"]
    from deploy.records import load_record_dir, render_page
    page = render_page(load_record_dir(out))
    assert "| starnet_s1 |" in page and "not measured: " in page
