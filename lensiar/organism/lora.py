"""Low-rank adapters for the organism's light backbone tuning, and merging them into plain weights.

A :class:`LoRALinear` computes ``W x + (B A x) * scale`` with ``A [r, d_in]``, ``B [d_out, r]``; ``B``
starts at zero, so an adapted model starts equal to its base. After training, :func:`merge_into`
adds ``scale * B @ A`` to ``W`` and the model is a plain HF model again. Only ``A`` and ``B`` are
stored (the organism's delta files), which keeps them small.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from jaxtyping import Float
from torch import Tensor, nn

#: Llama projections that get adapters
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """``base(x) + scale * x @ A.T @ B.T``; the base layer is frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.A = nn.Parameter(torch.empty(rank, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        with torch.no_grad():
            self.A.normal_(0.0, 1.0 / math.sqrt(base.in_features), generator=generator)
        base.weight.requires_grad_(False)

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scale

    def delta(self) -> Float[Tensor, "d_out d_in"]:
        return (self.B @ self.A) * self.scale


def attach(decoder: nn.Module, rank: int = 8, alpha: float = 16.0, seed: int = 0) -> dict[str, LoRALinear]:
    """Replace every targeted projection under ``decoder`` by a :class:`LoRALinear`; returns name -> adapter."""
    gen = torch.Generator().manual_seed(seed)
    adapters: dict[str, LoRALinear] = {}
    for name, module in list(decoder.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in TARGETS and isinstance(child, nn.Linear):
                adapter = LoRALinear(child, rank, alpha, gen)
                setattr(module, child_name, adapter)
                adapters[f"{name}.{child_name}" if name else child_name] = adapter
    if not adapters:
        raise ValueError("no projection named " + ", ".join(TARGETS) + " was found to adapt")
    return adapters


def detach(decoder: nn.Module) -> None:
    """Merge every adapter under ``decoder`` into its base weight and put the plain ``nn.Linear`` back."""
    for module in list(decoder.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                with torch.no_grad():
                    child.base.weight += child.delta().to(child.base.weight.dtype)
                setattr(module, child_name, child.base)


def remove(decoder: nn.Module) -> None:
    """Put every adapted projection's plain ``nn.Linear`` back *without* merging: the weights as before
    :func:`attach` (for a tuning run that failed)."""
    for module in list(decoder.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.base)


def factors(adapters: dict[str, LoRALinear]) -> dict[str, Tensor]:
    """``{name}.A`` / ``{name}.B`` tensors (``B`` pre-multiplied by the scale), ready for safetensors."""
    out: dict[str, Tensor] = {}
    for name, adapter in adapters.items():
        out[f"{name}.A"] = adapter.A.detach().contiguous()
        out[f"{name}.B"] = (adapter.B.detach() * adapter.scale).contiguous()
    return out


def average(factor_sets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The mean of several adapters' deltas ("soup"), itself as factors: ``A`` stacked along the rank, ``B``
    concatenated and divided by their number, so ``B @ A`` is the mean of the ``B_i @ A_i`` (rank = the sum)."""
    if not factor_sets:
        raise ValueError("average needs at least one set of factors")
    names = set(factor_sets[0])
    if bad := [i for i, f in enumerate(factor_sets) if set(f) != names]:
        raise ValueError(f"factor sets {bad} adapt other layers than set 0")
    out: dict[str, Tensor] = {}
    for name in sorted(names):
        if name.endswith(".A"):
            out[name] = torch.cat([f[name] for f in factor_sets], 0).contiguous()
        else:
            b = torch.cat([f[name].float() for f in factor_sets], 1) / len(factor_sets)
            out[name] = b.to(factor_sets[0][name].dtype).contiguous()
    return out


def apply_factors(decoder: nn.Module, tensors: dict[str, Tensor]) -> int:
    """Add ``B @ A`` from saved factors to the matching weights under ``decoder``; returns how many."""
    modules = dict(decoder.named_modules())
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    for name in names:
        layer = modules.get(name)
        if not isinstance(layer, nn.Linear):
            raise KeyError(f"delta names {name!r}, which is not a linear layer of this backbone")
        a, b = tensors[f"{name}.A"].float(), tensors[f"{name}.B"].float()
        if (b.shape[0], a.shape[1]) != tuple(layer.weight.shape):
            raise ValueError(f"delta for {name!r} has shape {(b.shape[0], a.shape[1])}, weight is "
                             f"{tuple(layer.weight.shape)}")
        with torch.no_grad():
            layer.weight += (b @ a).to(layer.weight.dtype)
    return len(names)


def trainable(adapters: dict[str, LoRALinear]) -> Iterator[nn.Parameter]:
    for adapter in adapters.values():
        yield adapter.A
        yield adapter.B
