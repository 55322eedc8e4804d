"""Writing revision vectors into a running model: hooks (undone on exit) or biases (``bake``).

Head level: ``z[l, h] += alpha * sigma[l, h] * v[l, h]`` for the selected heads, as a forward
pre-hook on ``o_proj`` (its input is ``attn.hook_z``). Layer level: ``h_l += alpha * sigma_l * v_l``
on the residual leaving layer ``l`` (``hook_resid_post``), added to the output of the layer's last
residual write (the MLP), so ``hook_mlp_out`` reads the unrevised MLP and ``hook_resid_post`` the
revised residual. By default (``positions="all"``) both act at every position of every forward pass, so
with the KV cache on they revise the prompt and each generated token. ``positions="prompt"`` revises the
forward passes that start a sequence (the prompt) and leaves the ones that continue a KV cache (each
generated token) alone: the answer is written by the unrevised model, reading the revised prompt's cache.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel

from lensiar.arch import BAKE, text_layers
from lensiar.bundle import POSITIONS, BundleError, RevisionBundle
from lensiar.offload import is_offloaded
from lensiar.probes import Gate

if TYPE_CHECKING:
    from lensiar.lens import Lens


class RevisionError(RuntimeError):
    """A revision that cannot be applied as asked."""


#: the keyword a decoder layer's KV cache arrives under, by transformers version and family
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")


def continues_cache(kwargs: dict[str, Any]) -> bool:
    """Whether a decoder layer's forward continues a KV cache that already holds tokens (a generation step)."""
    for name in _CACHE_KWARGS:
        cache = kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return bool(cache.get_seq_length() > 0)
    return False


def where(bundle: RevisionBundle, positions: str | None) -> str:
    """``positions``, or the bundle's default, else ``"all"`` (as :func:`strength` does for alpha)."""
    return positions or bundle.defaults.get("positions", "all")


def head_shifts(
    bundle: RevisionBundle, alpha: float, top_k: int | None = None, layers: list[int] | None = None
) -> dict[int, Float[Tensor, " n_heads_x_d_head"]]:
    """Layer -> the shift added to ``o_proj``'s input (zeros outside the selected heads)."""
    chosen = bundle.selection(top_k, layers)
    shift = alpha * bundle.shift * chosen.unsqueeze(-1)  # [L, H, D]
    return {int(layer): einops.rearrange(shift[layer], "h d -> (h d)") for layer in chosen.any(1).nonzero().flatten()}


def layer_shifts(
    bundle: RevisionBundle, alpha: float, top_k: int | None = None, layers: list[int] | None = None
) -> dict[int, Float[Tensor, " d_model"]]:
    """Layer -> the shift added to that layer's output (the residual stream)."""
    chosen = bundle.selection(top_k, layers)
    return {int(layer): alpha * bundle.shift[layer] for layer in chosen.nonzero().flatten()}


@dataclass(eq=False)
class Revision:
    """One active revision: its hooks, its shifts, and (if conditional) its gate and this batch's gate values."""

    level: str
    shifts: dict[int, Tensor]
    gate: Gate | None = None
    gate_values: Tensor | None = None
    positions: str = "all"
    enabled: bool = True
    generating: bool = False  #: this forward pass continues a KV cache (set per pass when ``positions="prompt"``)
    handles: list[RemovableHandle] = field(default_factory=list)

    def scale(self, x: Tensor) -> Tensor | None:
        """Per-row factor ``[b, 1, ..., 1]`` for a gated revision (``None`` if not gated)."""
        if self.gate is None:
            return None
        if self.gate_values is None:
            raise RevisionError("a conditional revision decides per prompt before the forward pass; run it through "
                                "lens.generate / lens.forward / lens.run_with_cache, not the bare HF model")
        if self.gate_values.shape[0] != x.shape[0]:
            raise RevisionError(f"gate values for {self.gate_values.shape[0]} rows, batch has {x.shape[0]}")
        return self.gate_values.to(x.device, x.dtype).view(-1, *([1] * (x.ndim - 1)))

    def add(self, x: Tensor, shift: Tensor) -> Tensor:
        """``x + shift`` (gated rows only, if a gate is set), in ``x``'s device and dtype; ``x`` itself in a
        generation step of a prompt-only revision."""
        if self.generating:  # set only by a prompt-only revision's pre-hook
            return x
        shift = shift.to(x.device, x.dtype)
        factor = self.scale(x)
        return x + (shift if factor is None else factor * shift)

    def remove(self) -> None:
        """Remove every hook this revision installed."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _attach(lens: Lens, revision: Revision) -> None:
    """Register the revision's hooks on ``lens.model``."""
    layers = text_layers(lens.model, lens.arch)
    if revision.positions == "prompt":

        def mark(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            revision.generating = continues_cache(kwargs)

        revision.handles.append(layers[0].register_forward_pre_hook(mark, with_kwargs=True))
    for layer, shift in revision.shifts.items():
        if revision.level == "head":

            def pre_hook(module: nn.Module, args: tuple[Any, ...], shift: Tensor = shift) -> tuple[Any, ...] | None:
                if not revision.enabled:
                    return None
                return (revision.add(args[0], shift), *args[1:])

            revision.handles.append(lens.o_proj(layer).register_forward_pre_hook(pre_hook))
        else:

            def post_hook(module: nn.Module, args: Any, output: Any, shift: Tensor = shift) -> Any:
                if not revision.enabled:
                    return None
                if isinstance(output, tuple):
                    return (revision.add(output[0], shift), *output[1:])
                return revision.add(output, shift)

            # on the module whose output is the last thing the layer adds to its residual (the MLP, or
            # Gemma's post-feedforward norm): the layer's output, hook_resid_post, then carries the shift
            last = getattr(layers[layer], lens.arch.mlp_out)
            revision.handles.append(last.register_forward_hook(post_hook))


def _bundles(bundles: RevisionBundle | Sequence[RevisionBundle]) -> list[RevisionBundle]:
    if isinstance(bundles, str | bytes):
        raise TypeError(f"revise takes RevisionBundle objects, got the string {bundles!r}; load a file with "
                        "RevisionBundle.load(path, lens=lens) or a stored one with VectorStore(...).load(name, lens=lens)")
    items = [bundles] if isinstance(bundles, RevisionBundle) else list(bundles)
    if not items:
        raise RevisionError("no bundle given")
    if wrong := [type(b).__name__ for b in items if not isinstance(b, RevisionBundle)]:
        raise TypeError(f"revise takes RevisionBundle objects, got {', '.join(wrong)}")
    return items


def strength(bundle: RevisionBundle, alpha: float | None) -> float:
    """``alpha``, or the bundle's default; refused unless a finite real number (NaN or inf gives NaN logits)."""
    a = bundle.defaults.get("alpha", 1.0) if alpha is None else alpha
    if isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(a):
        raise ValueError(f"alpha must be a finite number, got {a!r}")
    return float(a)


def _check_top_k(top_k: int | None) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None for the bundle's default), got {top_k!r}")


def _check_gate(gate: Gate, n_layers: int, d_model: int) -> None:
    if not 0 <= gate.layer < n_layers:
        raise RevisionError(f"gate layer {gate.layer} is out of range")
    if tuple(gate.weight.shape) != (d_model,):
        raise RevisionError(f"gate weight has shape {tuple(gate.weight.shape)}; this model needs ({d_model},)")
    if not torch.isfinite(gate.weight).all() or not math.isfinite(gate.bias) or not 0 <= gate.threshold <= 1:
        raise ValueError("gate has NaN or infinite weights or bias, or a threshold outside [0, 1]")


@contextmanager
def revise(
    lens: Lens,
    bundles: RevisionBundle | Sequence[RevisionBundle],
    alpha: float | None = None,
    top_k: int | None = None,
    layers: list[int] | None = None,
    gate: Gate | bool = False,
    positions: str | None = None,
) -> Iterator[list[Revision]]:
    """Apply one or more bundles during every forward pass in the block; undone on exit and on exceptions.

    Args:
        alpha: strength in units of each vector's sigma (default: the bundle's).
        top_k: heads (head level) or layers (layer level) revised, ranked by held-out probe log-loss.
        layers: restrict the selection to these layers.
        gate: ``True`` uses the bundle's gate, or give a :class:`Gate`: revise only the prompts the
            gate's probe flags (decided on the last prompt token of the unrevised model).
        positions: ``"all"`` (prompt and every generated token) or ``"prompt"`` (the passes that start a
            sequence; generated tokens, which continue the KV cache, are not shifted); default: the bundle's, else
            ``"all"``.
    """
    revisions: list[Revision] = []
    _check_top_k(top_k)
    if positions is not None and positions not in POSITIONS:
        raise ValueError(f"positions must be one of {', '.join(map(repr, POSITIONS))}, got {positions!r}")
    try:
        for bundle in _bundles(bundles):
            bundle.validate(lens.spec)
            a = strength(bundle, alpha)
            chosen_gate: Gate | None
            if gate is True:
                if bundle.gate is None:
                    raise RevisionError("gate=True but the bundle has no gate; extract with gate=True "
                                        "(query strategy) or pass a lensiar.Gate")
                chosen_gate = bundle.gate
            else:
                chosen_gate = gate or None
            if chosen_gate is not None:
                _check_gate(chosen_gate, lens.spec.n_layers, lens.spec.d_model)
            make = head_shifts if bundle.level == "head" else layer_shifts
            revision = Revision(bundle.level, make(bundle, a, top_k, layers), chosen_gate,
                                positions=where(bundle, positions))
            revisions.append(revision)
            _attach(lens, revision)
        lens._revisions.extend(revisions)
        yield revisions
    finally:
        for revision in revisions:
            revision.remove()
            if revision in lens._revisions:
                lens._revisions.remove(revision)


class _StopForward(Exception):
    pass


@torch.no_grad()
def gate_values(lens: Lens, gate: Gate, model_kwargs: dict[str, Any]) -> Float[Tensor, " b"]:
    """Run the unrevised model up to the gate's layer and score each row's last prompt token.

    An ``images_only`` gate gives 0 for a batch without images (the Lens never mixes prompts with and
    without images in one batch) and does not run the model for it."""
    if gate.images_only and model_kwargs.get("pixel_values") is None:
        return torch.zeros(model_kwargs["attention_mask"].shape[0])
    captured: dict[str, Tensor] = {}

    def grab(module: nn.Module, args: Any, output: Any) -> None:
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    handle = text_layers(lens.model, lens.arch)[gate.layer].register_forward_hook(grab)
    active = [r for r in lens._revisions if r.enabled]
    for r in active:
        r.enabled = False
    try:
        kwargs = {k: v for k, v in model_kwargs.items() if k not in ("past_key_values", "use_cache")}
        with suppress(_StopForward):
            lens.model(**kwargs, use_cache=False)
    finally:
        handle.remove()
        for r in active:
            r.enabled = True
    if "h" not in captured:
        raise RevisionError(f"gate layer {gate.layer} did not run on this batch")
    mask = model_kwargs["attention_mask"]
    seq = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask.bool(), seq, -1).amax(1)
    h = captured["h"][torch.arange(mask.shape[0], device=mask.device), last]
    return gate(h)


@contextmanager
def gated(lens: Lens, model_kwargs: dict[str, Any]) -> Iterator[None]:
    """Decide the gate of every active conditional revision on this batch for the duration of the block."""
    gated_revisions = [r for r in lens._revisions if r.gate is not None]
    try:
        for r in gated_revisions:
            assert r.gate is not None
            r.gate_values = gate_values(lens, r.gate, model_kwargs)
        yield
    finally:
        for r in gated_revisions:
            r.gate_values = None


# ---------------------------------------------------------------------- baking
@dataclass(eq=False)
class BakedInPlace:
    """Undo handle of :func:`bake_in_place`: ``undo()`` (or leaving the ``with`` block) restores every bias and
    config flag the bake touched, bit for bit."""

    model: nn.Module
    biases: list[tuple[nn.Linear, Tensor | None]] = field(default_factory=list)
    flags: list[tuple[Any, str, Any]] = field(default_factory=list)
    done: bool = False

    def undo(self) -> None:
        """Restore the model as it was before the bake (idempotent)."""
        if self.done:
            return
        for linear, bias in reversed(self.biases):
            if bias is None:
                linear.bias = None  # type: ignore[assignment]
            else:
                with torch.no_grad():
                    linear.bias.copy_(bias)
        for config, name, value in reversed(self.flags):
            setattr(config, name, value)
        self.done = True

    def __enter__(self) -> BakedInPlace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


def _add_bias(linear: nn.Linear, value: Tensor | None = None, record: BakedInPlace | None = None) -> None:
    """Give ``linear`` a bias (zeros if it had none) and add ``value`` to it; ``record`` remembers the old bias."""
    if record is not None and not any(linear is seen for seen, _ in record.biases):
        record.biases.append((linear, None if linear.bias is None else linear.bias.detach().clone()))
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype,
                                               device=linear.weight.device))
    if value is not None:
        with torch.no_grad():
            linear.bias.add_(value.to(linear.bias.dtype).to(linear.bias.device))


def _checked_items(lens: Lens, bundles: RevisionBundle | Sequence[RevisionBundle], alpha: float | None,
                   top_k: int | None) -> tuple[Any, list[RevisionBundle]]:
    text_config = lens.model.config.get_text_config()
    spec = BAKE.get(text_config.model_type)
    if spec is None:
        raise RevisionError(f"cannot bake into {text_config.model_type}: its config cannot declare the biases "
                            f"needed (bakeable text backbones: {', '.join(sorted(BAKE))}); use lens.revise instead")
    items = _bundles(bundles)
    _check_top_k(top_k)
    for b in items:
        b.validate(lens.spec)
        strength(b, alpha)
    if is_offloaded(lens.model):
        raise RevisionError("cannot bake an offloaded model (device_map put weights on CPU or disk, kept on meta "
                            "between passes): bake copies the whole model; use lens.revise, which works with offload, "
                            "or load the model without offload to bake it")
    if any(b.level == "layer" for b in items) and spec.mlp_flag is None:
        raise RevisionError(f"a layer-level revision cannot be baked exactly into {text_config.model_type} (its MLP "
                            "output passes a norm before the residual); use lens.revise, or a head-level bundle")
    return spec, items


def _write(lens: Lens, model: PreTrainedModel, spec: Any, items: list[RevisionBundle], alpha: float | None,
           top_k: int | None, layers: list[int] | None, record: BakedInPlace | None = None) -> None:
    """Write ``items`` into ``model``'s biases (``model`` is ``lens.model`` or a copy of it)."""
    new_config = model.config.get_text_config()
    layers_list = text_layers(model, lens.arch)
    for used, flag, blocks in ((any(b.level == "head" for b in items), spec.attention_flag,
                                [(block.self_attn, spec.attention_modules) for block in layers_list]),
                               (any(b.level == "layer" for b in items), spec.mlp_flag,
                                [(block.mlp, spec.mlp_modules) for block in layers_list])):
        if not used:
            continue
        if record is not None:
            record.flags.append((new_config, flag, getattr(new_config, flag, None)))
        setattr(new_config, flag or "", True)
        for module, names in blocks:
            for name in names:
                _add_bias(getattr(module, name), record=record)
    for b in items:
        a = strength(b, alpha)
        if b.level == "head":
            for layer, shift in head_shifts(b, a, top_k, layers).items():
                o_proj = getattr(layers_list[layer].self_attn, lens.arch.o_proj)
                _add_bias(o_proj, o_proj.weight.float() @ shift.to(o_proj.weight.device).float(), record)
        else:
            for layer, shift in layer_shifts(b, a, top_k, layers).items():
                _add_bias(getattr(layers_list[layer].mlp, spec.mlp_modules[-1]), shift, record)


@torch.no_grad()
def bake(
    lens: Lens,
    bundles: RevisionBundle | Sequence[RevisionBundle],
    alpha: float | None = None,
    top_k: int | None = None,
    layers: list[int] | None = None,
) -> PreTrainedModel:
    """A copy of ``lens.model`` with the revision written into biases; ``lens.model`` is not changed.

    Head level goes into ``o_proj``'s bias (``W_O @ shift``, exact since o_proj is linear); layer level
    into the bias of the MLP's last projection where the MLP output is the last thing a layer adds.
    The config's bias flags are switched on so ``save_pretrained`` / ``from_pretrained`` rebuild it.
    The copy needs the model's memory a second time; :func:`bake_in_place` needs none.
    """
    spec, items = _checked_items(lens, bundles, alpha, top_k)
    model = copy.deepcopy(lens.model)
    _write(lens, model, spec, items, alpha, top_k, layers)
    return model


@torch.no_grad()
def bake_in_place(
    lens: Lens,
    bundles: RevisionBundle | Sequence[RevisionBundle],
    alpha: float | None = None,
    top_k: int | None = None,
    layers: list[int] | None = None,
) -> BakedInPlace:
    """Write the revision into ``lens.model``'s own biases (no copy: for a model that fills the GPU) and return
    the handle that undoes it. ``with bake_in_place(lens, bundle): ...`` undoes on exit and on exceptions; a
    failure half-way undoes what was written."""
    spec, items = _checked_items(lens, bundles, alpha, top_k)
    record = BakedInPlace(lens.model)
    try:
        _write(lens, lens.model, spec, items, alpha, top_k, layers, record)
    except BaseException:
        record.undo()
        raise
    return record


__all__ = ["BakedInPlace", "BundleError", "Revision", "RevisionError", "bake", "bake_in_place", "gate_values", "gated", "head_shifts",
           "layer_shifts", "revise"]
