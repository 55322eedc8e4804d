"""Captured activations and the position rules that reduce them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from lensiar.hooks import KINDS, HookPoint

Positions = str | Tensor


def select_mask(
    positions: Positions, attention_mask: Bool[Tensor, "b s"], image_mask: Bool[Tensor, "b s"] | None
) -> Bool[Tensor, "b s"]:
    """The positions a rule reads, never a padding position."""
    valid = attention_mask.bool()
    if isinstance(positions, Tensor):
        if positions.shape != valid.shape:
            raise ValueError(f"position mask has shape {tuple(positions.shape)}, the batch is {tuple(valid.shape)}")
        return (positions != 0).to(valid.device) & valid
    if positions in ("last", "mean", "all"):
        return valid
    if positions == "image":
        if image_mask is None:
            raise ValueError("positions='image' needs a vision-language model; this one is text-only")
        return image_mask & valid
    raise ValueError(f"unknown positions {positions!r}; use 'last', 'mean', 'all', 'image' or a boolean mask [batch, seq]")


def reduce(
    value: Float[Tensor, "b s ..."], positions: Positions, mask: Bool[Tensor, "b s"]
) -> Float[Tensor, "b ..."] | Float[Tensor, "b s ..."]:
    """Apply a position rule: ``last`` -> last unpadded token, ``mean`` -> mean over unpadded tokens,
    a floating-point ``[b, s]`` tensor -> the sum over positions weighted by it, anything else -> the full
    sequence with every unselected position set to zero."""
    mask = mask.to(value.device)  # layers may sit on different devices
    if isinstance(positions, Tensor) and positions.is_floating_point():
        weights = positions.to(value.device, value.dtype) * mask.to(value.dtype)
        return (value * weights.reshape(*weights.shape, *([1] * (value.ndim - 2)))).sum(1)
    if isinstance(positions, str) and positions == "last":
        seq = torch.arange(mask.shape[1], device=mask.device)
        last = torch.where(mask, seq, -1).amax(dim=1)
        return value[torch.arange(value.shape[0], device=value.device), last]
    weights = mask.to(value.dtype).reshape(*mask.shape, *([1] * (value.ndim - 2)))
    if isinstance(positions, str) and positions == "mean":
        return (value * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    return value * weights


def reduces(positions: Positions) -> bool:
    """Whether a position rule gives one value per row (``[b, ...]``) rather than the sequence."""
    if isinstance(positions, Tensor):
        return positions.is_floating_point()
    return positions in ("last", "mean")


def left_pad(values: list[Tensor], length: int) -> Tensor:
    """Left-pad ``[b, s, ...]`` tensors with zeros to ``length`` along dim 1 and concatenate."""
    out = []
    for v in values:
        pad = torch.zeros(v.shape[0], length - v.shape[1], *v.shape[2:], dtype=v.dtype, device=v.device)
        out.append(torch.cat([pad, v], dim=1))
    return torch.cat(out)


class ActivationCache(Mapping[str, Tensor]):
    """Hook name -> captured values ``[batch, ...]`` (``[batch, seq, ...]`` for selecting positions).

    ``mask`` (``[batch, seq]``) marks the positions that hold values when the rule keeps the sequence;
    it is ``None`` for ``last`` / ``mean``.
    """

    def __init__(self, values: dict[str, Tensor], positions: Positions, mask: Tensor | None) -> None:
        self._values = values
        self.positions = positions
        self.mask = mask
        self.logits: Tensor | None = None

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"{name!r} was not captured; captured: {', '.join(self._values)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def stack(self, kind: str) -> Tensor:
        """Values of one kind (``"attn.hook_z"``, ``"hook_resid_post"``, ...) stacked over layers: ``[n_layers, batch, ...]``."""
        if kind not in KINDS:
            raise KeyError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
        names = sorted((n for n in self._values if n.endswith("." + kind)), key=lambda n: int(n.split(".")[1]))
        if not names:
            raise KeyError(f"no {kind!r} values were captured")
        return torch.stack([self._values[n] for n in names])

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in list(self._values.items())[:4])
        more = f", ... ({len(self)} names)" if len(self) > 4 else ""
        return f"ActivationCache(positions={self.positions!r}, {shapes}{more})"


def hook_order(point: HookPoint) -> tuple[int, int]:
    """Execution order inside a forward pass (nnsight reads modules in the order they run)."""
    order = {"resid_pre": 0, "z": 1, "attn_out": 2, "mlp_out": 3, "resid_post": 4}
    return (point.layer, order[point.kind])
