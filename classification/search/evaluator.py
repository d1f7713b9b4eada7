"""Metrics of sub-networks: parameters and latency computed, accuracy measured with inherited weights."""
from __future__ import annotations

from typing import Any

import torch

from backbones.errors import UsageError
from backbones.supernet import EfficientFormerV2Supernet, SubnetConfig
from deploy.latency_lut import LatencyTable, subnet_keys, table_entries

from .calibration import Batches, evaluate, recalibrate_bn
from .objective import MesSpec

__all__ = ["SubnetEvaluator"]


class SubnetEvaluator:
    """Metrics of sub-networks of a supernet: size and latency (table) are computed, accuracy is
    measured with inherited weights after BatchNorm recalibration. Without a latency table, sizes
    and accuracies are available but not `cost`.

    Args:
        supernet: the trained supernet.
        table: latency table of its space (None: no `cost`).
        val: (images, targets) batches accuracy is measured on.
        calib: batches BatchNorm statistics are recalibrated on.
        calib_batches: recalibration batches per sub-network.
        mes: the Mobile Efficiency Score's units and exponents.
        val_batches: at most this many `val` batches (None: all).
    """

    def __init__(self, supernet: EfficientFormerV2Supernet, table: LatencyTable | None, val: Batches, calib: Batches,
                 calib_batches: int = 10, mes: MesSpec = MesSpec(), val_batches: int | None = None) -> None:
        self.supernet = supernet
        self.table = table
        self.val = val
        self.calib = calib
        self.calib_batches = calib_batches
        self.val_batches = val_batches
        self.mes_spec = mes
        self.evaluations = 0
        net = supernet
        self._modules = {key: factory for key, factory, _ in table_entries(net.space, net.img_size,
                                                                             net.num_classes, net.distillation)}
        self._module_params: dict[str, int] = {}

    def count_params(self, config: SubnetConfig) -> int:
        """Parameters of the plain model of `config`: the sum over its modules (the table's
        entries), each counted once on the meta device and cached."""
        total = 0
        for key in subnet_keys(config):
            if key not in self._module_params:
                with torch.device("meta"):
                    self._module_params[key] = sum(p.numel() for p in self._modules[key]().parameters())
            total += self._module_params[key]
        return total

    def cost(self, config: SubnetConfig) -> tuple[int, float, float]:
        """(parameters, predicted latency in ms, MES)."""
        if self.table is None:
            raise UsageError("latency and MES need a latency table (tools/build_latency_lut.py)")
        params = self.count_params(config)
        latency = self.table.predict(config)
        return params, latency, self.mes_spec(params, latency)

    def accuracy(self, config: SubnetConfig) -> tuple[float, float]:
        """(top-1 %, loss) of `config` with inherited weights, BatchNorm recalibrated."""
        self.supernet.set_subnet(config)
        recalibrate_bn(self.supernet, self.calib, self.calib_batches)
        self.evaluations += 1
        return evaluate(self.supernet, self.val, self.val_batches)

    def record(self, config: SubnetConfig) -> dict[str, Any]:
        """params, latency_ms, mes, top1, loss and config (as a dict) of `config`."""
        params, latency, mes = self.cost(config)
        acc, loss = self.accuracy(config)
        return {"params": params, "latency_ms": latency, "mes": mes, "top1": acc, "loss": loss,
                "config": config.to_dict()}
