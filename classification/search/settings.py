"""Typed settings of the search (configs/search/search_*.yaml).

A search config has the sections `lut`, `mes`, `search` (with `target`) and `random`, and the key
`base_config`; each section is a frozen dataclass below. Reading is strict: an unknown or
mistyped key, at any depth, is a `SettingsError` that names it and lists the accepted keys, and a
value of the wrong type or out of range names its key too. A file may start from another with
`extends: OTHER.yaml` (relative to the file): sections merge key by key, the file's own keys win.
"""
from __future__ import annotations

import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from backbones.errors import EfficientFormerV2Error, NotFoundError
from deploy.latency_lut import Backend

from .evaluator import SubnetEvaluator
from .moves import ExpansionMode
from .objective import MesSpec, Target

__all__ = ["SettingsError", "LutSettings", "TargetSettings", "GreedySettings", "RandomSettings", "SearchSettings",
           "load_settings"]

EXTENDS_KEY = "extends"


class SettingsError(EfficientFormerV2Error, ValueError):
    """A search config that cannot be used: the message names the key and what it accepts."""


def _positive(section: str, **values: float | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise SettingsError(f"{section}.{name} must be positive, got {value}")


@dataclass(frozen=True)
class LutSettings:
    """The `lut:` section: how tools/demo_search.py builds and checks the latency table.

    Args:
        backend: the table's runtime (`deploy.latency_lut.BACKENDS`: torch, onnxruntime, executorch,
            openvino).
        threads: intra-op threads while timing.
        warmup: untimed runs per entry.
        runs: timed runs per entry (the median is kept).
        check_subnets: random sub-networks timed whole to check the table's sums.
    """

    backend: Backend = "torch"
    threads: int = 1
    warmup: int = 10
    runs: int = 50
    check_subnets: int = 10

    def __post_init__(self) -> None:
        _positive("lut", threads=self.threads, runs=self.runs, check_subnets=self.check_subnets)
        if self.warmup < 0:
            raise SettingsError(f"lut.warmup must be >= 0, got {self.warmup}")


@dataclass(frozen=True)
class TargetSettings:
    """The `search.target:` section: where the greedy search stops (every given bound met).

    Args:
        params: parameter count, at most.
        latency_ms: latency by the table, at most.
        mes: MES, at least.
        mes_factor: MES at least this factor times the largest sub-network's (instead of `mes`).
    """

    params: float | None = None
    latency_ms: float | None = None
    mes: float | None = None
    mes_factor: float | None = None

    def __post_init__(self) -> None:
        if all(v is None for v in (self.params, self.latency_ms, self.mes, self.mes_factor)):
            raise SettingsError("search.target needs one of params, latency_ms, mes, mes_factor")
        if self.mes is not None and self.mes_factor is not None:
            raise SettingsError("search.target: give mes or mes_factor, not both")
        _positive("search.target", params=self.params, latency_ms=self.latency_ms, mes=self.mes,
                  mes_factor=self.mes_factor)

    def resolve(self, evaluator: SubnetEvaluator) -> Target:
        """The `Target` (a `mes_factor` times the MES of the evaluator's largest sub-network)."""
        mes = self.mes
        if self.mes_factor is not None:
            mes = evaluator.cost(evaluator.supernet.space.largest())[2] * self.mes_factor
        return Target(self.params, self.latency_ms, mes)


@dataclass(frozen=True)
class GreedySettings:
    """The `search:` section: the greedy search and the images it evaluates on.

    Args:
        target: where the search stops.
        expansions: "joint" searches depth, width and expansion ratios together (the paper's
            search); "fixed" searches depth and width only, every block keeping the largest
            sub-network's ratio (paper Table 9, "From EfficientFormer").
        split: held-out split the actions are evaluated on.
        calib_split: split whose images recalibrate BatchNorm (evaluation transform).
        calib_batches: recalibration batches per sub-network.
        batch_size: images per batch.
        max_images: evenly spaced images of `split` (None: all of it).
        cache: hold the evaluation batches in memory.
        max_steps: stop after this many actions.
    """

    target: TargetSettings
    expansions: ExpansionMode = "joint"
    split: str = "val"
    calib_split: str = "train"
    calib_batches: int = 10
    batch_size: int = 100
    max_images: int | None = None
    cache: bool = True
    max_steps: int = 1000

    def __post_init__(self) -> None:
        _positive("search", calib_batches=self.calib_batches, batch_size=self.batch_size,
                  max_images=self.max_images, max_steps=self.max_steps)


@dataclass(frozen=True)
class RandomSettings:
    """The `random:` section: the random-search baseline at the searched budget (paper Table 4).

    Args:
        count: random sub-networks at the budget.
        tolerance: each bound met with at most this much (relative) to spare.
        cloud: extra uniformly drawn sub-networks for the plot.
        seed: seed of the draws.
    """

    count: int = 10
    tolerance: float = 0.1
    cloud: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        _positive("random", count=self.count, tolerance=self.tolerance)
        if self.cloud < 0:
            raise SettingsError(f"random.cloud must be >= 0, got {self.cloud}")


@dataclass(frozen=True)
class SearchSettings:
    """A whole search config.

    Args:
        search: the greedy search (`GreedySettings`).
        lut: the latency table's timing (`LutSettings`; used by tools/demo_search.py).
        mes: the MES's units and exponents (`MesSpec`; paper: alpha_latency 1.0, alpha_size 0.5).
        random: the random baseline (`RandomSettings`).
        base_config: classification config the searched network's training config starts from
            (a path; relative paths are relative to the working folder). None: only `model.arch`.
    """

    search: GreedySettings
    lut: LutSettings = field(default_factory=LutSettings)
    mes: MesSpec = field(default_factory=MesSpec)
    random: RandomSettings = field(default_factory=RandomSettings)
    base_config: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSettings":
        """Strictly typed settings from a config's dict (an `extends` key is not read here: see
        `load_settings`)."""
        return _build(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _build(cls: type, data: Any, where: str) -> Any:
    """An instance of dataclass `cls` from `data`, every key checked against its fields."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SettingsError(f"{where or 'a search config'} must be a mapping of keys, got {data!r}")
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            raise SettingsError(f"unknown key {_join(where, str(key))!r}; accepted keys"
                                f"{' of ' + where if where else ''}: {', '.join(names)}")
    for f in fields(cls):
        if f.name not in data and f.default is MISSING and f.default_factory is MISSING:
            raise SettingsError(f"missing key {_join(where, f.name)!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {key: _convert(hints[key], value, _join(where, key)) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except SettingsError:
        raise
    except ValueError as e:  # a section's own check (e.g. MesSpec's alphas)
        raise SettingsError(str(e)) from None


def _convert(tp: Any, value: Any, key: str) -> Any:
    """`value` checked against (and, for numbers, converted to) type `tp`."""
    origin = typing.get_origin(tp)
    if is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [t for t in options if t is not type(None)]
        return _convert(inner, value, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise SettingsError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SettingsError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"settings field {key} has a type the reader does not handle: {tp}")


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def _read(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise NotFoundError(f"search config {str(path)!r} does not exist"
                            + (f" (extended by {str(seen[-1])!r})" if seen else ""))
    if path.resolve() in seen:
        raise SettingsError(f"{path}: extends itself through {' -> '.join(map(str, seen))}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SettingsError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a mapping of sections (lut, mes, search, random, base_config)")
    parent = data.pop(EXTENDS_KEY, None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise SettingsError(f"{path}: {EXTENDS_KEY} takes the path of another search config, got {parent!r}")
    return _merge(_read(path.parent / parent, seen + (path.resolve(),)), data)


def load_settings(path: str | Path) -> SearchSettings:
    """The settings of a search config file (following `extends`).

    Raises:
        FileNotFoundError: the file, or one it extends, does not exist.
        SettingsError: an unknown key, a missing one, or a value of the wrong type or range.
    """
    path = Path(path)
    data = _read(path, ())
    try:
        return SearchSettings.from_dict(data)
    except SettingsError as e:
        raise SettingsError(f"{path}: {e}") from None
