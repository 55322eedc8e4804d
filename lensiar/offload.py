"""Models dispatched by accelerate (``device_map=...``, CPU or disk offload): where inputs go, and reading
weights that live on the ``meta`` device between forward passes.

An offloaded module keeps its parameters on ``meta``; accelerate's ``AlignDevicesHook`` loads them onto the
execution device for each forward pass and drops them afterwards. lensiar's hooks are ordinary PyTorch
forward (pre-)hooks and run inside that window, so revisions and captures need nothing special. Code
that reads weights *outside* a forward pass (the fingerprint, ``W_O``, the unembedding) goes through
:func:`materialized` / :func:`state_tensors`, which load one module at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn


def _hook(module: nn.Module) -> Any:
    """The module's accelerate ``AlignDevicesHook`` if it offloads weights, else ``None``."""
    from accelerate.utils import has_offloaded_params

    return module._hf_hook if has_offloaded_params(module) else None


def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate placed ``model`` with a device map (``model.hf_device_map``)."""
    return bool(getattr(model, "hf_device_map", None))


def is_offloaded(model: nn.Module) -> bool:
    """Whether any of ``model``'s weights are offloaded (kept on ``meta`` between forward passes)."""
    return any(_hook(m) is not None for m in model.modules())


def _as_device(place: Any) -> torch.device:
    return torch.device(f"cuda:{place}") if isinstance(place, int) else torch.device(place)


def input_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: the input embedding's device, or for an offloaded embedding the first
    execution device in the device map (never ``meta``)."""
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if callable(getter) else None
    weight = getattr(embedding, "weight", None)
    if not is_dispatched(model) and isinstance(weight, Tensor) and weight.device.type != "meta":
        return weight.device  # the common case, on every batch: no walk over the modules
    if isinstance(embedding, nn.Module):
        hook = next((_hook(m) for m in _ancestors(model, embedding) if _hook(m) is not None), None)
        if hook is not None:
            return _as_device(hook.execution_device)
        if isinstance(weight, Tensor) and weight.device.type != "meta":
            return weight.device
    for place in (getattr(model, "hf_device_map", None) or {}).values():
        if place not in ("disk", "meta"):
            return _as_device(place)
    return next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))


def _ancestors(model: nn.Module, module: nn.Module) -> list[nn.Module]:
    """``module`` and every module above it in ``model``, innermost first."""
    for name, candidate in model.named_modules():
        if candidate is module:
            parts = name.split(".") if name else []
            chain = [model]
            for part in parts:
                chain.append(getattr(chain[-1], part))
            return chain[::-1]
    return [module]


@contextmanager
def materialized(model: nn.Module, module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``module``'s weights are real tensors (loaded from CPU or disk if offloaded)."""
    from accelerate.utils import align_module_device

    owners = [m for m in _ancestors(model, module) if _hook(m) is not None]
    with ExitStack() as stack:
        for owner in owners[::-1]:
            stack.enter_context(align_module_device(owner))
        yield module


def state_tensors(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """``module.state_dict()``'s (name, tensor) pairs in its order, loading offloaded weights one module at a
    time (each tensor is valid until the next one is yielded)."""
    from accelerate.utils import align_module_device

    hook = _hook(module)
    with align_module_device(module) if hook is not None else nullcontext():
        if hook is not None and hook.place_submodules:
            for name, tensor in module.state_dict().items():
                yield prefix + name, tensor
            return
        for name, param in module._parameters.items():
            if param is not None:
                yield prefix + name, param
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in module._non_persistent_buffers_set:
                yield prefix + name, buffer
    for name, child in module._modules.items():
        if child is not None:
            yield from state_tensors(child, f"{prefix}{name}.")


def dispatch(
    model: nn.Module,
    device_map: str | dict[str, Any],
    max_memory: dict[Any, int | str] | None = None,
    offload_folder: str | None = None,
    no_split_module_classes: list[str] | None = None,
) -> nn.Module:
    """Place an already-loaded model with accelerate (for models not loaded by ``from_pretrained``, such
    as the organism): ``device_map="auto"`` fills ``max_memory`` device by device, then CPU, then disk."""
    from accelerate import dispatch_model, infer_auto_device_map

    placement: dict[str, Any]
    if isinstance(device_map, str):
        if device_map != "auto":
            raise ValueError(f"device_map must be 'auto' or a dict of module name -> device, got {device_map!r}")
        split = no_split_module_classes or list(getattr(model, "_no_split_modules", None) or [])
        placement = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=split)
    else:
        placement = dict(device_map)
    if "disk" in placement.values() and offload_folder is None:
        raise ValueError("the device map puts weights on disk; give offload_folder=<a directory> for them")
    dispatched = dispatch_model(model, device_map=placement, offload_dir=offload_folder)
    dispatched.hf_device_map = placement
    return dispatched
