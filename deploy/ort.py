"""ONNX Runtime sessions for the CPU: session options, and an offline optimisation that keeps
the graph in ONNX Runtime's blocked (NCHWc) layout across elementwise ops its layout pass does
not know.

ONNX Runtime's NCHWc pass runs convolutions in a channel-blocked layout and converts back to
NCHW before any op it does not handle. GELU is one of them, so every GELU between two
convolutions costs a `ReorderOutput` and a `ReorderInput` on the largest tensors of the network.
An elementwise op gives the same result in either layout, so `optimize_for_cpu` saves the model
ONNX Runtime optimised for this CPU and rewires such ops to the blocked tensors directly. The
saved model is specific to the CPU's vector width (like any `ORT_ENABLE_ALL` optimised model);
`create_session(tuned=True)` rebuilds it when needed.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

__all__ = ["session_options", "create_session", "optimize_for_cpu", "keep_blocked_layout",
           "LAYOUT_AGNOSTIC_OPS"]

NCHWC_DOMAIN = "com.microsoft.nchwc"
# single-input elementwise ops (op type, domain) that ONNX Runtime's NCHWc pass leaves in NCHW
LAYOUT_AGNOSTIC_OPS = {("Gelu", ""), ("Gelu", "com.microsoft"), ("Erf", ""), ("HardSwish", ""),
                       ("FastGelu", "com.microsoft"), ("QuickGelu", "com.microsoft")}


def _ort():
    from .export import require_stack
    require_stack("onnx")
    import onnxruntime as ort
    return ort


def session_options(threads: int | None = None, level: str = "all", optimized_path: str | Path | None = None,
                    profile_prefix: str | None = None):
    """`onnxruntime.SessionOptions` for low-latency CPU inference: sequential execution, `threads`
    intra-op threads (None: ONNX Runtime's default), one inter-op thread, spinning threads.

    Args:
        level: graph optimisation level, "all", "extended", "basic" or "disabled".
        optimized_path: where ONNX Runtime saves the graph it optimised.
        profile_prefix: enable ONNX Runtime's profiler, writing a JSON trace with this prefix.
    """
    ort = _ort()
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    if level not in levels:
        raise ValueError(f"level must be one of {', '.join(levels)}, not {level!r}")
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[level]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def keep_blocked_layout(model) -> int:
    """Rewire layout-agnostic elementwise ops sitting between `ReorderOutput` and `ReorderInput`
    (an ONNX Runtime NCHWc-optimised `onnx.ModelProto`, in place) to run on the blocked tensors.
    Returns the number of ops rewired."""
    import onnx
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {o.name for o in graph.output}

    def attr(node, name, default=0):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    removed: set[int] = set()
    added = []
    renamed: dict[str, str] = {}
    count = 0
    for node in graph.node:
        if (node.op_type, node.domain) not in LAYOUT_AGNOSTIC_OPS or len(node.input) != 1:
            continue
        src = producer.get(node.input[0])
        if src is None or src.op_type != "ReorderOutput" or src.domain != NCHWC_DOMAIN or attr(src, "channels_last"):
            continue
        out = node.output[0]
        users = consumers[out]
        blocked_users = [u for u in users if u.op_type == "ReorderInput" and u.domain == NCHWC_DOMAIN
                         and not attr(u, "channels_last")]
        if not blocked_users:
            continue
        blocked = out + "_nchwc"
        node.input[0] = src.input[0]
        node.output[0] = blocked
        for u in blocked_users:
            renamed[u.output[0]] = blocked
            removed.add(id(u))
        if len(blocked_users) < len(users) or out in graph_outputs:
            added.append(onnx.helper.make_node("ReorderOutput", [blocked], [out], domain=NCHWC_DOMAIN,
                                               channels=attr(src, "channels")))
        if all(id(c) == id(node) for c in consumers[src.output[0]]) and src.output[0] not in graph_outputs:
            removed.add(id(src))
        count += 1
    if not count:
        return 0
    kept = [n for n in graph.node if id(n) not in removed]
    for n in kept:
        for i, name in enumerate(n.input):
            if name in renamed:
                n.input[i] = renamed[name]
    # keep a topological order: each added reorder right after the op producing its input
    order = []
    by_input = defaultdict(list)
    for r in added:
        by_input[r.input[0]].append(r)
    for n in kept:
        order.append(n)
        for o in n.output:
            order.extend(by_input.get(o, []))
    del graph.node[:]
    graph.node.extend(order)
    stale = set(renamed) | {n.output[0] for n in added}
    keep_vi = [vi for vi in graph.value_info if vi.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(keep_vi)
    return count


def optimize_for_cpu(path: str | Path, out_path: str | Path, threads: int | None = None) -> tuple[Path, int]:
    """Let ONNX Runtime optimise `path` fully for this CPU, save the result to `out_path` and
    keep its blocked layout across elementwise ops (`keep_blocked_layout`).
    Returns (out_path, number of ops rewired)."""
    import onnx
    ort = _ort()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ort.InferenceSession(str(path), session_options(threads, "all", optimized_path=out_path),
                         providers=["CPUExecutionProvider"])
    model = onnx.load(str(out_path))
    n = keep_blocked_layout(model)
    onnx.save(model, str(out_path))
    return out_path, n


def create_session(path: str | Path, threads: int | None = None, tuned: bool = False,
                   providers: list[str] | None = None, profile_prefix: str | None = None):
    """An `onnxruntime.InferenceSession` on the CPU with `session_options(threads)`.

    With `tuned`, the model is first optimised for this CPU by `optimize_for_cpu` (saved next to
    it as `<name>.cpu.onnx`) and that graph is run as it is.
    """
    ort = _ort()
    providers = providers or ["CPUExecutionProvider"]
    path = Path(path)
    if tuned:
        tuned_path, _ = optimize_for_cpu(path, path.with_suffix(".cpu.onnx"), threads)
        so = session_options(threads, "disabled", profile_prefix=profile_prefix)
        return ort.InferenceSession(str(tuned_path), so, providers=providers)
    return ort.InferenceSession(str(path), session_options(threads, "all", profile_prefix=profile_prefix),
                                providers=providers)
