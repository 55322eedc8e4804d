"""The Lens: one HF model (a VLM or a plain causal LM) wrapped by nnsight, read through hook names."""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

import einops
import torch
from jaxtyping import Bool, Float, Int
from nnsight import NNsight
from torch import Tensor, nn
from transformers import BatchEncoding, PreTrainedModel

from lensiar.arch import ArchSpec, arch_for, attention_name, get_path, image_token_id, text_layers
from lensiar.cache import ActivationCache, Positions, hook_order, left_pad, reduce, reduces, select_mask
from lensiar.hooks import HookPoint, all_names, parse
from lensiar.offload import input_device, materialized
from lensiar.progress import tqdm
from lensiar.prompt import Prompt, as_prompt
from lensiar.spec import ModelSpec, model_spec

if TYPE_CHECKING:
    from lensiar.bundle import RevisionBundle
    from lensiar.probes import Gate
    from lensiar.revision import BakedInPlace, Revision

Inputs = Sequence[Prompt | str] | Prompt | str | Mapping[str, Any]
T = TypeVar("T")


def _backs_off_on_oom(method: Callable[..., T]) -> Callable[..., T]:
    """On an out-of-memory error, run the call again with half the batch size (a warning says so), down to 1;
    at 1, raise :class:`OutOfMemory` with what to do. A prepared batch (one forward pass) is not split."""

    default = inspect.signature(method).parameters["batch_size"].default

    @functools.wraps(method)
    def wrapper(self: Lens, inputs: Inputs, *args: Any, batch_size: int | None = None, **kwargs: Any) -> T:
        size = batch_size if batch_size is not None else default
        while True:
            try:
                return method(self, inputs, *args, batch_size=size, **kwargs)
            except torch.OutOfMemoryError as error:
                if _is_batch(inputs) or isinstance(size, bool) or not isinstance(size, int) or size <= 1:
                    raise OutOfMemory(
                        f"out of memory on {self.device} in {method.__name__} at batch_size="
                        f"{1 if _is_batch(inputs) else size}: load the model in bfloat16, spread it with "
                        "device_map='auto' (max_memory, offload_folder), or shorten the prompts") from error
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                warnings.warn(f"{method.__name__}: out of memory at batch_size={size}; retrying at {size // 2}",
                              stacklevel=2)
                size //= 2

    return wrapper


class OutOfMemory(RuntimeError):
    """Out of memory even at batch size 1 (the message says what to try)."""


class Lens:
    """One HF model and its processor, read and written through the hook-name vocabulary.

    ``Lens(model, processor)`` wraps an already-loaded model (fp32 or any dtype, any device);
    :meth:`from_pretrained` loads a registry name, a local directory or a hub id. The model's
    weights are never modified by a Lens, except by :meth:`bake_in_place`, which returns its undo handle.
    """

    #: the longest prompt (tokens, images included) this Lens accepts; None: only the model's positions limit it
    max_prompt_tokens: int | None = 8192

    def __init__(self, model: PreTrainedModel, processor: Any = None) -> None:
        """Wrap a loaded HF model. Note: this puts ``model`` in eval mode (``model.eval()``); lensiar never trains
        it, and dropout must be off for captures and revisions to be deterministic."""
        self.model = model.eval()
        self.arch: ArchSpec = arch_for(model)
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.nn = NNsight(model)
        self.image_token_id = image_token_id(model, self.arch)
        self._revisions: list[Revision] = []  # active revisions (see lens.revise)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        device_map: str | dict[str, Any] | None = None,
        **hf_kwargs: Any,
    ) -> Lens:
        """Load a registry name (``"organism"``, ``"smollm2-135m-instruct"``), a local checkpoint directory or
        a hub id (``"llava-hf/llava-1.5-7b-hf"``; from the local cache when ``HF_HUB_OFFLINE`` is set).

        ``device`` (default CPU) or ``device_map`` (``"auto"`` or a dict; with ``max_memory`` and
        ``offload_folder`` for CPU/disk offload); ``quantization_config``, ``attn_implementation``,
        ``revision`` and the other keywords of :data:`lensiar.models.HF_KWARGS` go to transformers.
        """
        from lensiar.models import load_pretrained

        model, processor = load_pretrained(name_or_path, dtype=dtype, device=device, device_map=device_map,
                                           **hf_kwargs)
        return cls(model, processor)

    # ------------------------------------------------------------------ structure
    @cached_property
    def spec(self) -> ModelSpec:
        """n_layers, n_heads, n_kv_heads, d_head, d_model, architecture, fingerprint."""
        return model_spec(self.model, self.arch)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's device (for a model dispatched with a device map, the
        first execution device; never ``meta``)."""
        return input_device(self.model)

    @property
    def layers(self) -> nn.ModuleList:
        """The language backbone's decoder layers (from the architecture table)."""
        return text_layers(self.model, self.arch)

    def attention(self, layer: int) -> nn.Module:
        """The attention module of ``layer`` (``cross_attn`` on Mllama's cross-attention layers)."""
        n = len(self.layers)
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
            raise ValueError(f"layer must be an integer in [0, {n}), got {layer!r}")
        block = self.layers[layer]
        return getattr(block, attention_name(block, self.arch))

    def o_proj(self, layer: int) -> nn.Linear:
        """The attention output projection of ``layer``; its input is ``attn.hook_z``."""
        proj = getattr(self.attention(layer), self.arch.o_proj)
        assert isinstance(proj, nn.Linear)
        return proj

    def W_O(self, layer: int) -> Float[Tensor, "n_heads d_head d_model"]:
        """Each head's slice of ``o_proj``'s weight: ``o_proj(z) = sum_h z_h @ W_O[h] (+ bias)``."""
        proj = self.o_proj(layer)
        with materialized(self.model, proj):  # an offloaded layer keeps its weights on meta between passes
            weight = proj.weight.detach().clone()  # [d_model, n_heads * d_head]
        return einops.rearrange(weight, "m (h d) -> h d m", h=self.spec.n_heads)

    @cached_property
    def _takes_logits_to_keep(self) -> bool:
        return "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def hook_names(self) -> list[str]:
        """Every hook name this model exposes."""
        return all_names(self.spec.n_layers)

    # ------------------------------------------------------------------ inputs
    def _render(self, prompt: Prompt) -> str:
        tok = self.tokenizer
        has_template = bool(getattr(self.processor, "chat_template", None) or getattr(tok, "chat_template", None))
        if not has_template:
            system = f"{prompt.system}\n\n" if prompt.system else ""
            return system + prompt.text
        messages = prompt.messages()
        if not self.arch.vision:  # text-only chat templates expect plain string content
            messages = [dict(m, content=_plain(m["content"])) for m in messages]
        rendered = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return rendered if isinstance(rendered, str) else rendered[0]

    def prepare(self, prompts: Inputs, responses: Sequence[str] | None = None) -> BatchEncoding:
        """The exact model inputs for ``prompts`` (chat template applied, left padding, images processed);
        ``responses`` are appended after each rendered prompt (teacher forcing)."""
        if _is_batch(prompts):
            assert isinstance(prompts, Mapping)
            return prompts if isinstance(prompts, BatchEncoding) else BatchEncoding(dict(prompts))
        if not isinstance(prompts, Prompt | str | Sequence):
            raise TypeError(f"expected a prompt, a list of prompts or a prepared batch, got {type(prompts).__name__}")
        items = [as_prompt(p) for p in ([prompts] if isinstance(prompts, Prompt | str) else prompts)]
        if not items:
            raise ValueError("empty batch: give at least one prompt")
        if self.processor is None:
            raise ValueError(
                "this Lens has no processor/tokenizer, so it cannot build inputs from prompts; "
                "use Lens(model, processor) or pass an already-prepared batch (a BatchEncoding)"
            )
        has_images = any(p.images for p in items)
        if has_images and not self.arch.vision:
            raise ValueError(f"{self.spec.architecture} is a text-only model; it cannot take images")
        texts = [self._render(p) for p in items]
        if responses is not None:
            texts = [t + r for t, r in zip(texts, responses, strict=True)]
        with _left_padding(self.tokenizer):
            if has_images:
                if not all(p.images for p in items):
                    raise ValueError("a batch must be all image prompts or all text prompts; split it into two batches")
                images = [list(p.images) for p in items]
                batch = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
            elif self.arch.vision and not self.arch.processor_needs_images:
                batch = self.processor(text=texts, padding=True, return_tensors="pt")
            else:
                batch = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        for key in self.arch.drop_inputs:
            batch.pop(key, None)
        self._check_length(int(batch["input_ids"].shape[1]))
        return batch

    @property
    def max_positions(self) -> int | None:
        """The text config's ``max_position_embeddings`` (None where the config states none)."""
        value = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return int(value) if isinstance(value, int) else None

    def _check_length(self, n_tokens: int) -> None:
        """Refuse a prompt longer than the model's positions or :attr:`max_prompt_tokens`, before any work."""
        limit = self.max_prompt_tokens
        if limit is not None and n_tokens > limit:
            raise ValueError(f"a prompt of {n_tokens} tokens exceeds this Lens's limit of {limit} "
                             "(lens.max_prompt_tokens; set it higher or to None at your own risk of memory use)")
        if self.max_positions is not None and n_tokens > self.max_positions:
            raise ValueError(f"a prompt of {n_tokens} tokens exceeds the model's {self.max_positions} positions "
                             "(max_position_embeddings); shorten it")

    def prepare_with_responses(
        self, prompts: Sequence[Prompt | str], responses: Sequence[str]
    ) -> tuple[BatchEncoding, Bool[Tensor, "b s"]]:
        """Teacher forcing: each prompt's chat rendering followed by its response; the mask marks the response tokens."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if any(not r for r in responses):
            raise ValueError("every response must be a non-empty string")
        items = [as_prompt(p) for p in prompts]
        prompt_only = self.prepare(items)
        full = self.prepare(items, responses=responses)
        prompt_len = prompt_only["attention_mask"].sum(1)
        full_len = full["attention_mask"].sum(1)
        n_response = full_len - prompt_len
        if (n_response <= 0).any():
            raise ValueError("a response added no tokens after its prompt")
        seq = torch.arange(full["input_ids"].shape[1])
        mask = seq.unsqueeze(0) >= (full["input_ids"].shape[1] - n_response).unsqueeze(1)
        return full, mask

    def _batches(self, inputs: Inputs, batch_size: int) -> Iterator[BatchEncoding]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(inputs, Prompt | str | Sequence | Mapping):
            raise TypeError(f"expected a prompt, a list of prompts or a prepared batch, got {type(inputs).__name__}")
        if _is_batch(inputs):
            yield self.prepare(inputs)
            return
        items = [inputs] if isinstance(inputs, Prompt | str) else list(inputs)
        if not items:
            raise ValueError("empty batch: give at least one prompt")
        # a processor batch is all image prompts or all text prompts: consecutive runs of one kind are
        # batched separately, so the outputs keep the inputs' order
        run: list[Prompt | str] = []
        for item in items:
            if run and bool(as_prompt(item).images) != bool(as_prompt(run[0]).images):
                yield from self._runs(run, batch_size)
                run = []
            run.append(item)
        yield from self._runs(run, batch_size)

    def _runs(self, items: list[Prompt | str], batch_size: int) -> Iterator[BatchEncoding]:
        for start in range(0, len(items), batch_size):
            yield self.prepare(items[start : start + batch_size])

    def model_inputs(self, batch: BatchEncoding) -> dict[str, Any]:
        """``batch`` on the model's device, plus position ids that ignore left padding where the model needs them."""
        device = self.device
        kwargs = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
        for key in self.arch.drop_inputs:
            kwargs.pop(key, None)
        if self.arch.position_ids and "position_ids" not in kwargs and "attention_mask" in kwargs:
            kwargs["position_ids"] = (kwargs["attention_mask"].long().cumsum(-1) - 1).clamp_min(0)
        return kwargs

    def image_mask(self, batch: BatchEncoding) -> Bool[Tensor, "b s"] | None:
        """True at image-placeholder tokens (``None`` for a text-only model)."""
        if self.image_token_id is None:
            return None
        ids: Int[Tensor, "b s"] = batch["input_ids"]
        return (ids == self.image_token_id).to(self.device)  # beside the attention mask, on the model's device

    # ------------------------------------------------------------------ reading
    def _read(self, points: list[HookPoint]) -> Iterator[tuple[HookPoint, Any]]:
        """Inside an nnsight trace: yield (point, value) in execution order, as each module runs."""
        layers = get_path(self.nn, self.arch.layers)
        for point in sorted(points, key=hook_order):
            block = layers[point.layer]
            if point.kind == "resid_pre":
                yield point, block.input
            elif point.kind == "z":
                attn = getattr(block, attention_name(self.layers[point.layer], self.arch))
                yield point, getattr(attn, self.arch.o_proj).input
            elif point.kind == "attn_out":
                if self.arch.attn_out is None:
                    attn = getattr(block, attention_name(self.layers[point.layer], self.arch))
                    yield point, attn.output[0]
                else:
                    yield point, getattr(block, self.arch.attn_out).output
            elif point.kind == "mlp_out":
                yield point, getattr(block, self.arch.mlp_out).output
            else:
                out = block.output
                yield point, (out[0] if isinstance(out, tuple) else out)

    def skipped_layers(self, has_image: bool) -> set[int]:
        """Layers that do not run on this kind of batch (Mllama's cross-attention layers without an image)."""
        name = self.arch.image_only_attention
        if name is None or has_image:
            return set()
        return {i for i, block in enumerate(self.layers) if attention_name(block, self.arch) == name}

    def _runnable(self, points: list[HookPoint], names: list[str], has_image: bool) -> list[HookPoint]:
        """``points`` less the layers this batch skips; naming such a layer explicitly is an error."""
        skipped = self.skipped_layers(has_image)
        if not skipped:
            return points
        explicit = [n for n in names if "*" not in n]
        bad = [p.name for p in parse(explicit, self.spec.n_layers) if p.layer in skipped] if explicit else []
        if bad:
            raise ValueError(f"{', '.join(bad)}: layer(s) {sorted(skipped)} are cross-attention layers that only run "
                             "when the prompt has an image; give an image or use other layers")
        return [p for p in points if p.layer not in skipped]

    def _shape(self, point: HookPoint, value: Tensor) -> Tensor:
        value = value.detach()
        if point.kind == "z":
            return einops.rearrange(value, "b s (h d) -> b s h d", h=self.spec.n_heads)
        return value

    @_backs_off_on_oom
    @torch.no_grad()
    def run_with_cache(
        self,
        inputs: Inputs,
        names: str | Sequence[str],
        positions: Positions = "last",
        batch_size: int = 16,
        progress: bool = False,
        device: str | torch.device = "cpu",
        return_logits: bool = False,
    ) -> ActivationCache:
        """Capture hook values in one forward pass per batch.

        Args:
            inputs: prompts (strings / :class:`Prompt`) or one prepared batch.
            names: hook names (``blocks.3.attn.hook_z``; ``blocks.*.hook_resid_post`` for all layers).
            positions: ``"last"`` / ``"mean"`` give ``[batch, ...]``, as does a floating-point weight
                tensor ``[batch, seq]`` (prepared batch only; the weighted sum over positions); ``"all"``,
                ``"image"`` or a boolean mask ``[batch, seq]`` (prepared batch only) give
                ``[batch, seq, ...]`` with zeros outside the selection, and ``cache.mask`` tells which
                positions hold values. Reducing rules are applied as each layer runs, so memory does not
                grow with sequence length times layers.
            batch_size: prompts per forward pass.
            device: where captured values are stored.
            return_logits: also keep the model's logits of the same pass in ``cache.logits``
                (reduced by the same position rule; shape ``[batch, vocab]`` for last/mean).

        Per-position shapes: resid/attn_out/mlp_out ``[d_model]``, ``attn.hook_z`` ``[n_heads, d_head]``.
        Padding never contributes to a value.
        """
        name_list = [names] if isinstance(names, str) else list(names)
        requested = parse(name_list, self.spec.n_layers)
        if isinstance(positions, Tensor) and not _is_batch(inputs):
            raise ValueError("an explicit position mask needs a prepared batch (lens.prepare(prompts)), "
                             "so that its [batch, seq] shape is defined")
        collected: dict[str, list[Tensor]] = {p.name: [] for p in requested}
        masks: list[Tensor] = []
        logits: list[Tensor] = []
        batches = self._batches(inputs, batch_size)
        for batch in tqdm(batches, desc="capture", disable=not progress, leave=False):
            kwargs = self.model_inputs(batch)
            points = self._runnable(requested, name_list, has_image="pixel_values" in kwargs)
            mask = select_mask(positions, kwargs["attention_mask"], self.image_mask(batch))
            # Defined outside the block: nnsight runs the body in its own frame (and, for some models such
            # as Gemma3, more than once), so values are keyed rather than appended.
            saved: dict[HookPoint | None, Any] = {}
            if not return_logits and self._takes_logits_to_keep:
                kwargs["logits_to_keep"] = 1  # the vocabulary projection is a fifth of a small model's cost
            with self._gated(kwargs), self.nn.trace(**kwargs):
                # reduced as each layer runs: a last/mean/weighted capture never holds every layer's sequence
                for hook, value in self._read(points):
                    saved[hook] = reduce(self._shape(hook, value), positions, mask).to(device)
                if return_logits:
                    saved[None] = reduce(self.nn.output.logits.detach(), positions, mask).to(device)
            for point, value in saved.items():
                if point is None:
                    logits.append(value)
                else:
                    collected[point.name].append(value)
            masks.append(mask.to(device))
        keeps_seq = not reduces(positions)
        length = max(m.shape[1] for m in masks)
        values = {n: (left_pad(v, length) if keeps_seq else torch.cat(v)) for n, v in collected.items() if v}
        cache = ActivationCache(values, positions, left_pad(masks, length) if keeps_seq else None)
        if logits:
            cache.logits = left_pad(logits, length) if keeps_seq else torch.cat(logits)
        return cache

    @torch.no_grad()
    def forward(self, inputs: Inputs) -> Float[Tensor, "b s vocab"]:
        """Logits of one prepared batch or a list of prompts (one padded batch)."""
        kwargs = self.model_inputs(self.prepare(inputs))
        with self._gated(kwargs):
            return self.model(**kwargs).logits

    # ------------------------------------------------------------------ generation
    @_backs_off_on_oom
    @torch.no_grad()
    def generate(
        self,
        inputs: Inputs,
        max_new_tokens: int = 32,
        batch_size: int = 8,
        progress: bool = False,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Batched generation (left padding, greedy unless ``do_sample=True``); returns the new text per prompt."""
        if self.processor is None and not _is_batch(inputs):
            raise ValueError("this Lens has no processor/tokenizer; use Lens(model, processor)")
        texts: list[str] = []
        pad = _pad_id(self.tokenizer) if self.tokenizer is not None else None
        options: dict[str, Any] = {"do_sample": False, "pad_token_id": pad}
        options.update(generate_kwargs)
        for batch in tqdm(list(self._batches(inputs, batch_size)), desc="generate", disable=not progress, leave=False):
            kwargs = self.model_inputs(batch)
            kwargs.pop("position_ids", None)  # generate derives positions from the attention mask
            with self._gated(kwargs):
                out = self.model.generate(**kwargs, max_new_tokens=max_new_tokens, **options)
            new = out[:, kwargs["input_ids"].shape[1] :]
            if self.tokenizer is None:
                raise ValueError("decoding needs a tokenizer")
            texts.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return texts

    # ------------------------------------------------------------------ revision
    def revise(
        self,
        bundle: RevisionBundle | Sequence[RevisionBundle],
        alpha: float | None = None,
        top_k: int | None = None,
        layers: list[int] | None = None,
        gate: Gate | bool = False,
        positions: str | None = None,
    ) -> AbstractContextManager[list[Revision]]:
        """``with lens.revise(bundle, alpha=..., top_k=...):`` revise every forward pass in the block.

        Head level adds ``alpha * sigma * v`` to the top-k heads' z, layer level to the chosen layers'
        residual, at every prompt and generated position (``positions="prompt"``: the prompt's only;
        default: the bundle's, else every position).
        Bundles compose (give a list, or nest blocks). ``gate`` makes it conditional (see
        :func:`lensiar.revision.revise`). Hooks are removed on exit and on exceptions; weights are never
        touched.
        """
        from lensiar.revision import revise

        return revise(self, bundle, alpha=alpha, top_k=top_k, layers=layers, gate=gate, positions=positions)

    def bake(
        self,
        bundle: RevisionBundle | Sequence[RevisionBundle],
        alpha: float | None = None,
        top_k: int | None = None,
        layers: list[int] | None = None,
    ) -> PreTrainedModel:
        """A copy of the model with the revision in its biases (see :func:`lensiar.revision.bake`)."""
        from lensiar.revision import bake

        return bake(self, bundle, alpha=alpha, top_k=top_k, layers=layers)

    def bake_in_place(
        self,
        bundle: RevisionBundle | Sequence[RevisionBundle],
        alpha: float | None = None,
        top_k: int | None = None,
        layers: list[int] | None = None,
    ) -> BakedInPlace:
        """The revision written into this model's own biases, no copy; returns the undo handle (also a context
        manager). See :func:`lensiar.revision.bake_in_place`."""
        from lensiar.revision import bake_in_place

        return bake_in_place(self, bundle, alpha=alpha, top_k=top_k, layers=layers)

    def _gated(self, model_kwargs: dict[str, Any]) -> AbstractContextManager[None]:
        from lensiar.revision import gated

        if not any(r.gate is not None for r in self._revisions):
            return nullcontext()
        return gated(self, model_kwargs)

    def __repr__(self) -> str:
        s = self.spec
        return (f"Lens({s.architecture}: {s.n_layers} layers x {s.n_heads} heads (d_head {s.d_head}, "
                f"{s.n_kv_heads} kv), d_model {s.d_model})")


def _is_batch(inputs: Any) -> bool:
    """A prepared batch: BatchEncoding, BatchFeature (a UserDict) or a plain dict of tensors."""
    return isinstance(inputs, Mapping)


def _plain(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(c.get("text", "") for c in content)


def _pad_id(tokenizer: Any) -> int | None:
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if pad is not None else getattr(tokenizer, "eos_token_id", None)


@contextmanager
def _left_padding(tokenizer: Any) -> Iterator[None]:
    """Left padding for the duration of the block (a pad token falls back to EOS)."""
    if tokenizer is None:
        yield
        return
    side = tokenizer.padding_side
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = side
