"""What every elastic family shares: the variables, config checks, weight slicing and export.

A family's supernet is its largest subnet, built as an ordinary static module. Any other subnet
is the same construction code run with smaller choices; its tensors have the same names (blocks
a shallower stage drops are simply absent) and each is a slice of the supernet tensor of that
name: the leading channels, and the centre of a larger kernel (OFA's weight sharing without its
kernel-transformation matrices). So one rule slices every family, and training runs a subnet
through :func:`torch.func.functional_call` on slices (views) of the supernet's tensors, which
sends its gradients straight into the shared weights.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from ...atomic import atomic_path
from ...errors import OptionError
from ..export import export_module
from ..zoo import _init_params

Config = dict[str, int]
Index = tuple[Any, ...]


def make_divisible(v: float, divisor: int = 8) -> int:
    """OFA's channel rounding: nearest multiple of ``divisor``, never 10% below ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def prefix_index(sub: tuple[int, ...], full: tuple[int, ...], kernel_dims: int = 0) -> Index:
    """Leading entries along each dim; the centred window along the last ``kernel_dims``."""
    index = []
    for d, (s, f) in enumerate(zip(sub, full, strict=True)):
        start = (f - s) // 2 if d >= len(full) - kernel_dims else 0
        index.append(slice(start, start + s))
    return tuple(index)


@dataclass(frozen=True)
class Slot:
    """A block a subnet has while its ``depth`` variable is greater than ``index``, shaped by
    ``variables``; blocks of one ``kind`` have the same shapes for the same choices. What the
    search's predictors read (``Space.features``): a missing block's variables are left out of
    the encoding (OFA's), and a cost, summed over the blocks, is fitted on how many blocks of
    each kind take each choice."""

    kind: str
    depth: str
    index: int
    variables: tuple[str, ...]

    def present(self, depth: Any) -> Any:
        """Whether the block exists at the depth variable's value ``depth`` (element-wise)."""
        return depth > self.index


@dataclass(frozen=True)
class Scale:
    """Where a family lives: the input it takes and the classes it tells apart."""

    image_size: int
    in_channels: int
    num_classes: int


class ElasticFamily:
    """A weight-sharing family: subclasses declare ``_variables`` and build a static subnet."""

    def __init__(self, name: str, space: Any, scale: Scale, seed: int = 0) -> None:
        """``space``: the family's frozen dataclass of choices and base widths."""
        self.name, self.space, self.scale, self.seed = name, space, scale, int(seed)
        self._supernet: nn.Module | None = None

    # --- the space ---------------------------------------------------------------------------
    def _variables(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def _build(self, config: Config) -> nn.Module:
        """The static subnet of a validated config (random or meta weights)."""
        raise NotImplementedError

    def _empty_stages(self, config: Config) -> list[str]:
        """Names of the depth variables whose value leaves their stage without a block."""
        return []

    def slots(self) -> list[Slot]:
        """The blocks the depth variables add or drop (none for a family without them)."""
        return []

    def variables(self) -> dict[str, tuple[int, ...]]:
        """Ordered {name: choices}, every choice an int (ratios are in percent)."""
        return dict(self._variables())

    def largest(self) -> Config:
        return {n: max(c) for n, c in self._variables().items()}

    def smallest(self) -> Config:
        return {n: min(c) for n, c in self._variables().items()}

    def sample(self, rng: np.random.Generator) -> Config:
        """A uniformly random config, drawn from ``rng`` in variable order."""
        return {n: c[int(rng.integers(len(c)))] for n, c in self._variables().items()}

    def validate(self, config: Mapping[str, Any]) -> Config:
        """The config as ints; an OptionError naming the variable and its choices if it is not
        in the space."""
        space = self._variables()
        unknown = sorted(set(config) - set(space))
        missing = [n for n in space if n not in config]
        if unknown or missing:
            raise OptionError(
                f"{self.name}: config has unknown variables {unknown} and lacks {missing}; "
                f"give exactly {list(space)} (see variables())"
            )
        for name in self._empty_stages(dict(config)):
            raise OptionError(
                f"{self.name}: {name}={config[name]!r} leaves its stage with no block; "
                f"choose {name} from {list(space[name])}"
            )
        for name, choices in space.items():
            if config[name] not in choices:
                raise OptionError(
                    f"{self.name}: {name}={config[name]!r} is not one of its choices "
                    f"{list(choices)}"
                )
        return {n: int(config[n]) for n in space}

    # --- weights -----------------------------------------------------------------------------
    @property
    def supernet(self) -> nn.Module:
        """The largest subnet, holding every shared tensor (seeded random until trained)."""
        if self._supernet is None:
            g = torch.Generator().manual_seed(self.seed)
            with torch.device("meta"):
                model = self._build(self.largest())
            model = model.to_empty(device="cpu")
            _init_params(model, g)
            self._supernet = model
        return self._supernet

    def _index(self, name: str, sub: tuple[int, ...], full: tuple[int, ...]) -> Index:
        """How the subnet tensor ``name`` of shape ``sub`` sits in the supernet's."""
        return prefix_index(sub, full, kernel_dims=2 if len(full) == 4 else 0)

    def shared_tensors(self, config: Config, skeleton: nn.Module) -> dict[str, torch.Tensor]:
        """Every parameter and buffer of ``skeleton`` (built for ``config``) as a slice of the
        supernet's tensor; basic slices are views, so gradients reach the supernet."""
        full = dict(self.supernet.named_parameters()) | dict(self.supernet.named_buffers())
        own = dict(skeleton.named_parameters()) | dict(skeleton.named_buffers())
        out = {}
        for name, t in own.items():
            f = full[name]
            out[name] = f if t.shape == f.shape else f[self._index(name, t.shape, f.shape)]
        return out

    def subnet(self, config: Mapping[str, Any]) -> nn.Module:
        """A static module with the shared weights copied out (train, export or keep it alone),
        in eval mode."""
        config = self.validate(config)
        with torch.device("meta"):
            skeleton = self._build(config)
        tensors = self.shared_tensors(config, skeleton)
        model = skeleton.to_empty(device="cpu")
        model.load_state_dict({n: t.detach().clone() for n, t in tensors.items()}, strict=True)
        return model.eval()

    def runner(self, config: Mapping[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
        """``f(x)``: the subnet's forward on the supernet's own tensors (training: gradients
        and BatchNorm running statistics land in the shared tensors). Train/eval mode follows
        the supernet's."""
        config = self.validate(config)
        with torch.device("meta"):
            skeleton = self._build(config)
        skeleton.train(self.supernet.training)
        tensors = self.shared_tensors(config, skeleton)
        return lambda x: functional_call(skeleton, tensors, (x,))

    def example(self, batch: int = 1) -> torch.Tensor:
        """A seeded input of the family's shape."""
        s = self.scale
        g = torch.Generator().manual_seed(self.seed)
        return torch.rand(batch, s.in_channels, s.image_size, s.image_size, generator=g)

    def export(
        self,
        config: Mapping[str, Any],
        path: str | os.PathLike[str],
        dynamic_batch: bool = False,
        module: nn.Module | None = None,
    ) -> pathlib.Path:
        """Write the subnet of ``config`` (or ``module``, e.g. that subnet after BatchNorm
        recalibration) as ONNX with the zoo's exporter; input ``input``, output ``logits``."""
        model = self.subnet(config) if module is None else module
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return export_module(model, self.example(), path, dynamic_batch)

    # --- saving the trained supernet ---------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """The supernet's tensors, written atomically."""
        with atomic_path(path) as tmp:
            torch.save({"family": self.name, "state": self.supernet.state_dict()}, tmp)

    def load(self, path: str | os.PathLike[str]) -> ElasticFamily:
        """Replace the supernet's tensors by those :meth:`save` wrote; returns self."""
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob["family"] != self.name:
            raise OptionError(f"{path} holds weights of {blob['family']}, not {self.name}")
        self.supernet.load_state_dict(blob["state"], strict=True)
        return self
