"""The hook-name vocabulary: TransformerLens names over any backbone.

| name | shape at one position | meaning |
|---|---|---|
| ``blocks.{l}.hook_resid_pre`` | ``[d_model]`` | residual stream entering layer l |
| ``blocks.{l}.hook_resid_post`` | ``[d_model]`` | residual stream leaving layer l |
| ``blocks.{l}.attn.hook_z`` | ``[n_heads, d_head]`` | each head's output before ``o_proj`` (its input, split into heads) |
| ``blocks.{l}.hook_attn_out`` | ``[d_model]`` | attention contribution to the residual |
| ``blocks.{l}.hook_mlp_out`` | ``[d_model]`` | MLP contribution to the residual |

A ``*`` in place of the layer index means every layer.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

#: hook suffix -> short kind
KINDS: dict[str, str] = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_post": "resid_post",
    "attn.hook_z": "z",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
}
_NAME = re.compile(r"blocks\.([0-9]+|\*)\.(.+)", re.ASCII)  # ASCII digits only ("blocks.٣" is refused)


class HookNameError(KeyError):
    """An unknown hook name; the message suggests the closest valid names."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, order=True)
class HookPoint:
    """One parsed hook name: layer index and kind (``resid_pre``, ``resid_post``, ``z``, ...)."""

    layer: int
    kind: str

    @property
    def name(self) -> str:
        """The hook name, e.g. ``blocks.3.attn.hook_z``."""
        suffix = next(s for s, k in KINDS.items() if k == self.kind)
        return f"blocks.{self.layer}.{suffix}"


def all_names(n_layers: int) -> list[str]:
    """Every hook name of a model with ``n_layers`` layers."""
    return [f"blocks.{layer}.{suffix}" for layer in range(n_layers) for suffix in KINDS]


def parse(names: str | list[str] | tuple[str, ...], n_layers: int) -> list[HookPoint]:
    """Parse hook names (with ``*`` for every layer) into sorted, unique :class:`HookPoint`s."""
    if isinstance(names, str):
        names = [names]
    if not names:
        raise HookNameError("no hook names given; e.g. 'blocks.0.attn.hook_z' or 'blocks.*.hook_resid_post'")
    points: set[HookPoint] = set()
    for name in names:
        if not isinstance(name, str):
            raise HookNameError(f"hook names are strings, got {name!r}")
        match = _NAME.fullmatch(name)
        suffix = match.group(2) if match else None
        if match is None or suffix not in KINDS:
            close = difflib.get_close_matches(name, all_names(n_layers), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise HookNameError(f"unknown hook name {name!r}.{hint} Valid kinds: {', '.join(KINDS)}.")
        index = match.group(1)
        layers = range(n_layers) if index == "*" else [int(index)]
        for layer in layers:
            if not 0 <= layer < n_layers:
                raise HookNameError(f"hook name {name!r}: layer {layer} out of range (model has {n_layers} layers)")
            points.add(HookPoint(layer, KINDS[suffix]))
    return sorted(points)
