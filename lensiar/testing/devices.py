"""Catch mixed-device bugs without a GPU: a simulated accelerator.

Inside :func:`simulated_gpu`, a model's parameters and buffers carry a ``simulated cuda:0`` tag. A
``TorchFunctionMode`` follows the tag through every torch call: the result of an operation on tagged tensors is
tagged, ``.to("cuda")`` / ``device="cuda"`` tag (the data stays on the CPU), ``.to("cpu")`` / ``.cpu()``
untag, and ``tensor.device`` of a tagged tensor reads ``cuda:0``, so code that follows ``x.device`` behaves as
on a GPU. An operation that mixes a tagged tensor with an untagged one of one or more dimensions raises
:class:`DeviceMismatch`, as CUDA would ("Expected all tensors to be on the same device"). Indexing and
copies, which CUDA allows across devices, are exempt; 0-dim CPU tensors mix freely, as on CUDA. Tensors
made outside torch functions keep their source's tag: ``nn.Parameter(t)``, deep copies of parameters and the
results of ``torch.vmap``ped functions.

What it covers: Python-level torch calls in lensiar, transformers and nnsight (the whole forward pass, hooks,
capture, revision, baking, probing glue). What it does not: kernels that only exist on CUDA, memory, streams,
and code that asks ``torch.cuda`` directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

TAG = "_lensiar_simulated_cuda"
SIMULATED = torch.device("cuda", 0)
_EXEMPT = {"__getitem__", "__setitem__", "copy_", "to", "cpu", "cuda", "__get__", "__set__", "__repr__",
           "__format__", "tolist", "item", "numpy", "__len__", "__bool__", "__index__", "__int__", "__float__",
           "dim", "size", "numel", "data_ptr", "storage_offset", "stride", "is_floating_point", "element_size",
           "nelement", "__contains__", "__iter__", "__reduce_ex__", "__deepcopy__"}


class DeviceMismatch(RuntimeError):
    """An operation combined a tensor on the (simulated) GPU with a tensor on the CPU."""


def _tagged(t: Any) -> bool:
    return isinstance(t, Tensor) and bool(getattr(t, TAG, False))


def _tag(t: Any, value: bool = True) -> Any:
    if isinstance(t, Tensor):
        with suppress(AttributeError, RuntimeError):  # some C-level tensors refuse attributes
            setattr(t, TAG, value)
    return t


def _is_cuda(device: Any) -> bool:
    if device is None or isinstance(device, torch.dtype):
        return False
    if isinstance(device, int):
        return True
    try:
        return torch.device(device).type == "cuda"
    except (RuntimeError, TypeError):
        return False


def _target_device(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool | None, tuple[Any, ...],
                                                                                         dict[str, Any]]:
    """For ``.to``/``.cuda``/``.cpu`` and factories: (tag the result?, args and kwargs with cuda swapped for cpu)."""
    if name == "cuda":
        return True, args[:1], {}
    if name == "cpu":
        return False, args, kwargs
    target: bool | None = None
    if "device" in kwargs and kwargs["device"] is not None:
        target = _is_cuda(kwargs["device"])
        kwargs = dict(kwargs, device="cpu")
    if name == "to":
        new_args = list(args)
        for i, a in enumerate(args[1:], start=1):
            if isinstance(a, str | torch.device | int) and not isinstance(a, bool):
                target = _is_cuda(a)
                new_args[i] = "cpu"
            elif isinstance(a, Tensor):  # .to(other): other's device
                target = _tagged(a)
                new_args[i] = a.dtype
        args = tuple(new_args)
    return target, args, kwargs


class SimulatedGPU(TorchFunctionMode):
    """The mode behind :func:`simulated_gpu`."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__" and getattr(func, "__self__", None) is Tensor.device and args and _tagged(args[0]):
            return SIMULATED
        if name == "__get__" and getattr(func, "__self__", None) is Tensor.is_cuda and args and _tagged(args[0]):
            return True
        target, args, kwargs = _target_device(name, args, kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
        on_gpu = any(_tagged(t) for t in inputs)
        if on_gpu and name not in _EXEMPT:
            cpu = [tuple(t.shape) for t in inputs if not _tagged(t) and t.dim() > 0]
            if cpu:
                raise DeviceMismatch(f"{name or func}: tensors on cuda:0 (simulated) and on cpu {cpu}")
        out = func(*args, **kwargs)
        if target is not None and args and out is args[0] and _tagged(out) != target:
            out = out.clone()  # .to() of a tensor already in place returns it; a real move to another device copies
        if name in ("__set__", "__setitem__", "copy_") and target is None:
            return out
        tag = target if target is not None else (on_gpu if name not in ("cpu", "numpy", "tolist", "item") else False)
        if tag or (isinstance(out, Tensor) and _tagged(out) != bool(tag)):
            tree_map(lambda t: _tag(t, bool(tag)), out)
        return out


@contextmanager
def simulated_gpu(*modules: nn.Module) -> Iterator[None]:
    """Within the block, ``modules``' parameters and buffers sit on a simulated ``cuda:0`` (see the module
    docstring); any mixed-device operation raises :class:`DeviceMismatch`. Tags are removed on exit."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    for t in tensors:
        _tag(t)
    copy_parameter = nn.Parameter.__deepcopy__

    def deepcopy_on_device(self: nn.Parameter, memo: dict[int, Any]) -> nn.Parameter:
        # Parameter.__deepcopy__ builds the copy outside torch functions: a copy stays on its source's device
        return _tag(copy_parameter(self, memo), _tagged(self))  # type: ignore[no-any-return]

    new_parameter = nn.Parameter.__new__

    def parameter_on_device(cls: type, data: Tensor | None = None, requires_grad: bool = True) -> nn.Parameter:
        # nn.Parameter(t) wraps t outside torch functions: the parameter stays on t's device
        return _tag(new_parameter(cls, data, requires_grad), _tagged(data))  # type: ignore[no-any-return]

    vmap = torch.vmap

    def vmap_on_device(func: Any, *args: Any, **kwargs: Any) -> Any:
        # functorch's batched tensors drop Python attributes: a vmapped function's result lives where its inputs do
        mapped = vmap(func, *args, **kwargs)

        def call(*inputs: Any, **named: Any) -> Any:
            out = mapped(*inputs, **named)
            if any(_tagged(t) for t in tree_flatten((inputs, named))[0]):
                tree_map(_tag, out)
            return out

        return call

    nn.Parameter.__deepcopy__ = deepcopy_on_device  # type: ignore[method-assign,assignment]
    nn.Parameter.__new__ = parameter_on_device  # type: ignore[method-assign,assignment]
    torch.vmap = vmap_on_device  # type: ignore[assignment]
    try:
        with SimulatedGPU():
            yield
    finally:
        nn.Parameter.__deepcopy__ = copy_parameter  # type: ignore[method-assign]
        nn.Parameter.__new__ = new_parameter  # type: ignore[method-assign,assignment]
        torch.vmap = vmap  # type: ignore[assignment]
        for t in tensors:
            _tag(t, False)
