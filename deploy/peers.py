"""EfficientFormerV2 against the mobile backbones timm ships, side by side: each model at its
native resolution, measured interleaved per runtime through `deploy.benchmark` (`prepare`, then
`measure`), with the ImageNet-1K top-1 its authors or timm published, and a top-1 against latency plot
with the Pareto frontier marked.

    records, failures = measure_peers(PEERS, ["onnxruntime"], threads=1)
    plot_pareto(records, "peers_onnxruntime.png", "onnxruntime")

Figures: EfficientFormerV2's are the paper's (the README's); every other model's is timm's
evaluation (results-imagenet.csv) of the weights timm ships for it: timm's default pretrained tag
of the architecture (its `pretrained_cfg` gives the native resolution), except where that tag was
trained on more than ImageNet-1K (TinyViT's ImageNet-22k distilled weights, MobileNetV4-Hybrid-M's
ImageNet-12k ones), where the ImageNet-1K-only tag is used. Each peer's `source` says which.
Latency does not depend on the weights (random weights are measured), only on the architecture,
its tag's class count and its input size.

Interleaving: the models of one runtime are measured in one interleaved `measure` per native
resolution (224 and 256 px groups); each record names its group (`peer_group`). Compare latencies
inside a group directly; across groups they come from consecutive runs of the same process.

A model that a runtime cannot take (its export or its first run raises in `prepare`) is left out
of that runtime's table and listed in the failures with the reason; the others are measured.
"""
from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from backbones.errors import UsageError

from .benchmark import Settings, Subject, build_named_model, measure, prepare, prepare_subject

__all__ = ["Peer", "PEERS", "FAMILIES", "TIMM_RESULTS", "select_peers", "build_peer", "measure_peers",
           "pareto_front", "plot_pareto", "format_failures", "peer_table"]

# timm's evaluation of its weights, the source of most figures below (model tag, img_size, top1)
TIMM_RESULTS = ("timm results/results-imagenet.csv (huggingface/pytorch-image-models "
                "@ aa4b5850, 2026-08-08)")


@dataclass(frozen=True)
class Peer:
    """One model of the comparison.

    Attributes:
        name: a project variant (`efficientformerv2_s0`) or a timm architecture.
        family: the model family, as plotted and selected (`--families`).
        tag: the timm pretrained tag the figure belongs to (None for the project's variants, whose
            figure is of the official weights).
        resolution: the native input size (the tag's `pretrained_cfg["input_size"]`).
        top1: ImageNet-1K top-1 (%) at that resolution.
        source: where the figure comes from.
    """

    name: str
    family: str
    tag: str | None
    resolution: int
    top1: float
    source: str

    @property
    def timm_name(self) -> str | None:
        """`name.tag` for timm models, None for the project's."""
        return None if self.tag is None else f"{self.name}.{self.tag}"


def _t(name: str, family: str, tag: str, resolution: int, top1: float, note: str = "") -> Peer:
    """A peer whose figure is timm's evaluation of `name.tag` at `resolution`."""
    return Peer(name, family, tag, resolution, top1,
                f"{TIMM_RESULTS}: {name}.{tag} at {resolution} px" + (f"; {note}" if note else ""))


_EFV2 = "EfficientFormerV2"
_EFV2_PAPER = ("paper Table 2 (300 epochs, distilled; the official weights, which timm ships as "
               "efficientformerv2_{}.snap_dist_in1k, evaluate at {} in " + TIMM_RESULTS + ")")
PEERS: tuple[Peer, ...] = (
    # the project's variants: the authors' figures, as in the README (timm's harness gives them
    # 0.3-0.7 points more; the peers' figures are timm's)
    Peer("efficientformerv2_s0", _EFV2, None, 224, 75.7, _EFV2_PAPER.format("s0", 76.102)),
    Peer("efficientformerv2_s1", _EFV2, None, 224, 79.0, _EFV2_PAPER.format("s1", 79.684)),
    Peer("efficientformerv2_s2", _EFV2, None, 224, 81.6, _EFV2_PAPER.format("s2", 82.156)),
    Peer("efficientformerv2_l", _EFV2, None, 224, 83.3, _EFV2_PAPER.format("l", 83.642)),
    _t("mobilenetv2_100", "MobileNetV2", "ra_in1k", 224, 72.910, "timm's RandAugment training; paper: 72.0"),
    _t("mobilenetv4_conv_small", "MobileNetV4", "e2400_r224_in1k", 224, 73.756),
    _t("mobilenetv4_conv_medium", "MobileNetV4", "e500_r256_in1k", 256, 79.916),
    _t("mobilenetv4_hybrid_medium", "MobileNetV4", "ix_e550_r256_in1k", 256, 81.478,
       "ImageNet-1K only (timm's default tag is fine-tuned from ImageNet-12k)"),
    _t("repvit_m0_9", "RepViT", "dist_300e_in1k", 224, 78.652),
    _t("repvit_m1_1", "RepViT", "dist_300e_in1k", 224, 80.826),
    _t("repvit_m1_5", "RepViT", "dist_300e_in1k", 224, 82.382),
    _t("repvit_m2_3", "RepViT", "dist_300e_in1k", 224, 83.524),
    _t("fastvit_t8", "FastViT", "apple_in1k", 256, 76.184),
    _t("fastvit_t12", "FastViT", "apple_in1k", 256, 79.276),
    _t("fastvit_sa12", "FastViT", "apple_in1k", 256, 80.846),
    _t("fastvit_sa24", "FastViT", "apple_in1k", 256, 82.706),
    _t("efficientvit_b0", "EfficientViT (MIT)", "r224_in1k", 224, 71.408),
    _t("efficientvit_b1", "EfficientViT (MIT)", "r224_in1k", 224, 79.254),
    _t("efficientvit_b2", "EfficientViT (MIT)", "r224_in1k", 224, 82.162),
    _t("efficientvit_m1", "EfficientViT (Microsoft)", "r224_in1k", 224, 68.340),
    _t("efficientvit_m3", "EfficientViT (Microsoft)", "r224_in1k", 224, 73.394),
    _t("efficientvit_m5", "EfficientViT (Microsoft)", "r224_in1k", 224, 77.092),
    _t("swiftformer_xs", "SwiftFormer", "dist_in1k", 224, 75.600),
    _t("swiftformer_s", "SwiftFormer", "dist_in1k", 224, 78.462),
    _t("swiftformer_l1", "SwiftFormer", "dist_in1k", 224, 80.906),
    _t("swiftformer_l3", "SwiftFormer", "dist_in1k", 224, 82.994),
    _t("shvit_s1", "SHViT", "in1k", 224, 72.780),
    _t("shvit_s2", "SHViT", "in1k", 224, 75.184),
    _t("shvit_s3", "SHViT", "in1k", 224, 77.356),
    _t("shvit_s4", "SHViT", "in1k", 256, 79.362),
    _t("starnet_s1", "StarNet", "in1k", 224, 73.532),
    _t("starnet_s2", "StarNet", "in1k", 224, 74.666),
    _t("starnet_s3", "StarNet", "in1k", 224, 77.378),
    _t("starnet_s4", "StarNet", "in1k", 224, 78.824),
    _t("mobileone_s0", "MobileOne", "apple_in1k", 224, 71.398),
    _t("mobileone_s1", "MobileOne", "apple_in1k", 224, 75.760),
    _t("mobileone_s2", "MobileOne", "apple_in1k", 224, 77.504),
    _t("mobileone_s3", "MobileOne", "apple_in1k", 224, 78.002),
    _t("mobileone_s4", "MobileOne", "apple_in1k", 224, 79.446),
    _t("ghostnetv3_100", "GhostNetV3", "in1k", 224, 76.936),
    _t("tiny_vit_5m_224", "TinyViT", "in1k", 224, 79.196,
       "ImageNet-1K only (timm's default tag is distilled on ImageNet-22k)"),
    _t("tiny_vit_11m_224", "TinyViT", "in1k", 224, 81.538,
       "ImageNet-1K only (timm's default tag is distilled on ImageNet-22k)"),
    _t("tiny_vit_21m_224", "TinyViT", "in1k", 224, 83.268,
       "ImageNet-1K only (timm's default tag is distilled on ImageNet-22k)"),
)

FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(p.family for p in PEERS))


def _family_matches(given: str, family: str) -> bool:
    """`given` names `family` case-insensitively, or its stem (`EfficientViT` for both EfficientViT
    families)."""
    given, family = given.lower(), family.lower()
    return given in (family, family.split(" (")[0])


def select_peers(names: Iterable[str] | None = None, families: Iterable[str] | None = None,
                 peers: Sequence[Peer] = PEERS) -> list[Peer]:
    """The peers named (model names) and/or of the families given (case-insensitive; a family's
    stem, e.g. `EfficientViT`, takes all its kinds); all when neither is given. Order: that of
    `peers`.

    Raises:
        UsageError: a name or family that is not in `peers`, with the known ones.
    """
    names = list(names or [])
    families = list(families or [])
    known = {p.name for p in peers}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown peer(s) {unknown}: choose from {', '.join(p.name for p in peers)}")
    bad = [f for f in families if not any(_family_matches(f, p.family) for p in peers)]
    if bad:
        raise UsageError(f"unknown family(ies) {bad}: choose from {', '.join(dict.fromkeys(p.family for p in peers))}")
    if not names and not families:
        return list(peers)
    return [p for p in peers if p.name in names or any(_family_matches(f, p.family) for f in families)]


def build_peer(peer: Peer) -> nn.Module:
    """The eval-mode model of a peer with random weights: the project's variant built for its
    resolution, or timm's architecture with its tag's configuration (class count, input size)."""
    if peer.tag is None:
        return build_named_model(peer.name, peer.resolution)
    import timm
    return timm.create_model(peer.timm_name, pretrained=False).eval()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


def _subject(p: Peer, settings: Settings) -> Subject:
    """The peer built at its resolution, in deploy form, run once in PyTorch."""
    return prepare_subject((p.name, build_peer(p)), settings)


def measure_peers(peers: Sequence[Peer], runtimes: Sequence[str], threads: int = 1, batch_size: int = 1,
                  runs: int = 50, warmup: int = 10, log: Callable[[str], None] = lambda s: None
                  ) -> tuple[list[dict], list[dict]]:
    """Measure `peers` on each runtime, interleaved per native resolution: each model is built
    once (`deploy.benchmark.prepare_subject`), prepared on the runtime (`prepare`: exported, run
    once, compared with PyTorch), and the models that could be prepared are measured together
    once (`measure`).

    Args:
        peers: from `PEERS` (`select_peers`).
        runtimes: `deploy.benchmark` backends (e.g. executorch, openvino, onnxruntime, torch).
        threads, batch_size, runs, warmup: as for `run_benchmark`. ExecuTorch takes one thread
            count per process.

    Returns:
        (records, failures): benchmark records (tools/benchmark.py's JSON format), each with
        `top1`, `top1_source`, `family`, `tag` and `peer_group` (the runtime and resolution
        group it was measured interleaved with) added and `top1_paper` set to the figure;
        failures are {"model", "backend", "resolution", "reason"} of each model a runtime could
        not take (every runtime, for a model that cannot be built or run in PyTorch; every model
        of a group whose interleaved measurement failed).
    """
    if not peers:
        raise UsageError("no models to compare")
    names = [p.name for p in peers]
    if len(set(names)) != len(names):
        raise UsageError(f"peer names must be unique, got {names}")
    torch.set_num_threads(threads)
    subjects: dict[str, Subject] = {}
    broken: dict[str, str] = {}
    for p in peers:
        try:
            subjects[p.name] = _subject(p, Settings(batch_size=batch_size, threads=threads, resolution=p.resolution))
        except Exception as exc:  # noqa: BLE001 - reported, the others go on
            broken[p.name] = f"cannot be built or run in PyTorch: {_one_line(exc)}"
            log(f"{p.name}: {broken[p.name]}")
    groups: dict[int, list[Peer]] = defaultdict(list)
    for p in peers:
        if p.name in subjects:
            groups[p.resolution].append(p)
    records: list[dict] = []
    failures: list[dict] = []

    def failed(p: Peer, runtime: str, why: str) -> None:
        failures.append({"model": p.name, "backend": runtime, "resolution": p.resolution, "reason": why})

    for runtime in runtimes:
        for p in peers:
            if p.name in broken:
                failed(p, runtime, broken[p.name])
        for resolution in sorted(groups):
            group = groups[resolution]
            log(f"{runtime}: {len(group)} models at {resolution} px, interleaved")
            with tempfile.TemporaryDirectory(prefix="efv2-peers-") as tmp:
                entries = []
                for p in group:
                    log(f"preparing {p.name} on {runtime}")
                    try:
                        entries.append(prepare(subjects[p.name], runtime, tmp))
                    except Exception as exc:  # noqa: BLE001 - this model only; the others are measured
                        failed(p, runtime, _one_line(exc))
                        log(f"{p.name} on {runtime}: {failures[-1]['reason']}")
                if not entries:
                    continue
                try:
                    measured = measure(entries, runs, warmup, log=log)
                except Exception as exc:  # noqa: BLE001 - the group is reported, the other groups go on
                    why = f"the interleaved measurement of the {resolution} px group failed: {_one_line(exc)}"
                    for e in entries:
                        failed(next(p for p in group if p.name == e.subject.label), runtime, why)
                    log(f"{runtime}: {why}")
                    continue
            for r in measured:
                p = next(p for p in group if p.name == r.model)
                records.append({**r.as_dict(), "top1": p.top1, "top1_paper": p.top1, "top1_source": p.source,
                                "family": p.family, "tag": p.tag, "peer_group": f"{runtime}@{resolution}px"})
    return records, failures


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, top-1) points no other point beats: none is as fast and as
    accurate with one of the two strictly better. Sorted by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


# every family but EfficientFormerV2 (red) gets one of these, with its own marker
_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive",
            "tab:cyan", "navy", "darkgoldenrod", "teal", "indigo")


def plot_pareto(records: Sequence[dict], path: str | Path, runtime: str, failures: Sequence[dict] = ()) -> Path:
    """PNG of top-1 against median latency on `runtime`, one marker per family, EfficientFormerV2
    in red, the Pareto frontier drawn and its models filled; models the runtime could not take
    are named in a note under the plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    pts = [r for r in records if r["backend"] == runtime and r.get("top1") is not None]
    if not pts:
        raise ValueError(f"no records with a top-1 on {runtime} to plot")
    front = {id(pts[i]) for i in pareto_front([(r["latency_ms_median"], r["top1"]) for r in pts])}
    fig, ax = plt.subplots(figsize=(9, 6.5))
    markers = "osD^v<>phP*Xd8H"
    families = list(dict.fromkeys(r.get("family", r["model"]) for r in pts))
    for k, family in enumerate(families):
        rs = sorted((r for r in pts if r.get("family", r["model"]) == family), key=lambda r: r["latency_ms_median"])
        ours = family == _EFV2
        colour = "tab:red" if ours else _COLOURS[k % len(_COLOURS)]
        ax.plot([r["latency_ms_median"] for r in rs], [r["top1"] for r in rs], "-" if ours else ":",
                color=colour, alpha=0.6 if not ours else 1.0, lw=1.5 if ours else 0.8)
        for r in rs:
            ax.plot(r["latency_ms_median"], r["top1"], markers[k % len(markers)], color=colour, ms=7,
                    mfc=colour if id(r) in front else "white", mew=1.5)
        ax.plot([], [], markers[k % len(markers)], color=colour, label=family)
    for r in pts:
        ax.annotate(r["model"], (r["latency_ms_median"], r["top1"]), fontsize=6, xytext=(3, -8),
                    textcoords="offset points")
    fr = sorted((r for r in pts if id(r) in front), key=lambda r: r["latency_ms_median"])
    ax.step([r["latency_ms_median"] for r in fr], [r["top1"] for r in fr], where="post", color="black", lw=1,
            alpha=0.5, label="Pareto frontier (filled markers)")
    first = pts[0]
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(f"latency, ms (median, log scale; {runtime}, batch {first['batch_size']}, "
                  f"{first['threads']} thread{'s' if first['threads'] != 1 else ''}, native resolution)")
    ax.set_ylabel("ImageNet-1K top-1 (%, published)")
    ax.set_title(f"EfficientFormerV2 and mobile peers on {runtime}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=7, ncol=2)
    missing = [f for f in failures if f["backend"] == runtime]
    if missing:
        note = "not measured on this runtime: " + ", ".join(f["model"] for f in missing)
        fig.text(0.01, 0.005, note, fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.03 if missing else 0, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def format_failures(failures: Sequence[dict]) -> str:
    """One line per model a runtime could not take, with the reason."""
    return "\n".join(f"{f['model']} on {f['backend']} ({f['resolution']} px): {f['reason']}" for f in failures)


def peer_table(peers: Sequence[Peer] = PEERS) -> list[dict]:
    """The peers as dicts (name, family, tag, resolution, top1, source)."""
    return [asdict(p) for p in peers]
