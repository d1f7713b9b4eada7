"""Model size and compute: parameters and GMACs (torch.utils.flop_counter), and where an
ExecuTorch program spends its time (`executorch_op_profile`)."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_gmacs", "executorch_op_profile"]


def count_params(model: nn.Module) -> int:
    """All parameters of `model` (including a distillation head, as the paper's figures do)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gmacs(model: nn.Module, resolution: int | tuple[int, int] = 224, batch_size: int = 1) -> float:
    """Multiply-accumulates (in G) of one forward pass at `resolution`, per image.

    Counts what `torch.utils.flop_counter.FlopCounterMode` counts (convolutions, linear layers,
    matmuls including attention) and halves it; runs the model once in eval mode on zeros.
    """
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.zeros(batch_size, 3, h, w, device=device)
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / batch_size / 1e9


def executorch_op_profile(path: str | Path, x: torch.Tensor, runs: int = 50, warmup: int = 5) -> dict[str, float]:
    """Where the time of an ExecuTorch program goes: ExecuTorch's event tracer (ETDump) over
    `runs` runs after `warmup` untimed ones on `x`, read with `executorch.devtools.Inspector`;
    each event's median over the runs (a run preempted by another process does not skew it),
    summed by operator type, in ms, largest first. Operators inside the XNNPACK delegate
    appear under XNNPACK's names (`Fully Connected (NC, F32) GEMM`, `Transpose (ND, X32)`, ...),
    operators outside it under ExecuTorch's (`native_call_mm.out`, ...); the containers
    (`Method::execute`, `DELEGATE_CALL`, `OPERATOR_CALL`) and the loading events are left out, so
    the values add up to about the run's time. Runs in this process's XNNPACK threadpool (`deploy.executorch.set_threads`)."""
    import collections
    import re
    import statistics
    import tempfile

    from .stacks import require_stack

    require_stack("executorch")
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(Path(path), enable_etdump=True)
    method = program.load_method("forward")
    for _ in range(warmup + runs):
        method.execute([x.contiguous()])
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no debug buffer: tensor debug data are not wanted
        etdump, debug = Path(tmp) / "run.etdp", Path(tmp) / "debug.bin"
        program.write_etdump_result_to_file(str(etdump), str(debug))
        inspector = Inspector(etdump_path=str(etdump))
    per_op: collections.Counter = collections.Counter()
    containers = ("Method::execute", "DELEGATE_CALL", "OPERATOR_CALL")
    for block in inspector.event_blocks:
        if block.name != "Execute":  # the other block times loading (Method::init ...)
            continue
        for event in block.events:
            if event.name in containers or event.perf_data is None:
                continue
            timed = event.perf_data.raw[-runs:]
            per_op[re.sub(r" #\d+$", "", event.name)] += statistics.median(timed) if timed else 0.0
    return dict(per_op.most_common())
