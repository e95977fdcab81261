"""moba.MoaPlan: the Python mirror of the C++ moba::MoaPlan (per-layer, per-head MoA windows).

JSON reading, writing and validation go through the C++ implementation, so files read the same
in C++, the CLI and Python: ``{"alphas": [[per head] per layer], "betas": [[...]], "sink": 64}``
(also the MoA project's nested / per-layer-object formats; see docs/semantics.md).
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple, Union

from . import _core

_C = _core._C


class MoaPlan:
    """Per layer and head window parameters: head h of layer l sees ``sink`` tokens plus the
    last ``floor(alphas[l][h] + betas[l][h] * N)`` tokens of a sequence of N tokens."""

    def __init__(self, alphas: Sequence[Sequence[float]] = (),
                 betas: Sequence[Sequence[float]] = (), sink: int = 64):
        self.alphas: List[List[float]] = [[float(a) for a in layer] for layer in alphas]
        self.betas: List[List[float]] = [[float(b) for b in layer] for layer in betas]
        self.sink: int = int(sink)

    # -- conversion to / from the C++ object ------------------------------------------------
    def _to_cpp(self):
        p = _C.MoaPlan()
        p.alphas = self.alphas
        p.betas = self.betas
        p.sink = self.sink
        return p

    @classmethod
    def _from_cpp(cls, p) -> "MoaPlan":
        return cls(p.alphas, p.betas, p.sink)

    # -- the C++ API ------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.alphas)

    def validate(self, num_layers: int = -1, num_heads: int = -1) -> "MoaPlan":
        """Raise ValueError (naming the entry) on mismatched layers/heads, NaN/inf or < 0."""
        self._to_cpp().validate(num_layers, num_heads)
        return self

    def layer(self, index: int) -> Tuple[List[float], List[float], int]:
        """(alphas, betas, sink) of one layer, ready for ``moba.moa_attn``."""
        if index < 0:
            index += self.num_layers
        return tuple(self._to_cpp().layer(index))

    @classmethod
    def from_json(cls, text: str) -> "MoaPlan":
        return cls._from_cpp(_C.MoaPlan.from_json(text))

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "MoaPlan":
        return cls._from_cpp(_C.MoaPlan.load(os.fspath(path)))

    def to_json(self) -> str:
        return self._to_cpp().to_json()

    def save(self, path: Union[str, os.PathLike]) -> None:
        self._to_cpp().save(os.fspath(path))

    def __eq__(self, other) -> bool:
        return (isinstance(other, MoaPlan) and self.alphas == other.alphas
                and self.betas == other.betas and self.sink == other.sink)

    def __repr__(self) -> str:
        heads = len(self.alphas[0]) if self.alphas else 0
        return f"MoaPlan(layers={self.num_layers}, heads={heads}, sink={self.sink})"
