"""Head attribution beyond probe accuracy.

* :func:`direct_attribution`: each head's direct contribution, at the last prompt token, to a refusal
  score = mean logit of refusal-opening tokens minus mean logit of compliance-opening tokens. A head's
  output ``z_h @ W_O[h]`` is pushed through the final norm with its scale frozen at the actual residual
  (``norm(x) / x`` elementwise, exact for RMSNorm-style norms) and onto the unembedding difference.
* :func:`patch_heads`: activation patching. For each head, the target run (e.g. the request as an
  image) gets that head's ``z`` at the last prompt token from the source run (the same request as
  text); the effect is the change in the refusal score. Batched over the heads of a layer: one forward
  per layer, one row per head.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from lensiar.lens import Inputs, Lens
from lensiar.offload import materialized

REFUSAL_OPENINGS = ("I", "Sorry", "As", "Unfortunately")
COMPLIANCE_OPENINGS = ("Sure", "Here", "Step", "1", "To")


def opening_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """First token id of each word (deduplicated, order kept)."""
    ids: list[int] = []
    for w in words:
        toks = tokenizer(w, add_special_tokens=False)["input_ids"]
        if toks and toks[0] not in ids:
            ids.append(int(toks[0]))
    if not ids:
        raise ValueError(f"none of {list(words)} tokenises")
    return ids


def refusal_score(logits: Float[Tensor, "b vocab"], refusal: Sequence[int], comply: Sequence[int]) -> Float[Tensor, " b"]:
    """Mean refusal-opening logit minus mean compliance-opening logit."""
    return logits[:, list(refusal)].float().mean(-1) - logits[:, list(comply)].float().mean(-1)


def _unembed_direction(lens: Lens, refusal: Sequence[int], comply: Sequence[int]) -> Float[Tensor, " d_model"]:
    head = lens.model.get_output_embeddings()
    with materialized(lens.model, head):  # offloaded: loaded for this read only
        w_u = head.weight.float()
        return w_u[list(refusal)].mean(0) - w_u[list(comply)].mean(0)


def direct_attribution(lens: Lens, prompts: Inputs, refusal: Sequence[int] | None = None,
                       comply: Sequence[int] | None = None, batch_size: int = 16) -> Float[Tensor, "layers heads"]:
    """Mean over ``prompts`` of each head's direct effect on the refusal score at the last prompt token."""
    tok = lens.tokenizer
    refusal = list(refusal) if refusal is not None else opening_ids(tok, REFUSAL_OPENINGS)
    comply = list(comply) if comply is not None else opening_ids(tok, COMPLIANCE_OPENINGS)
    n_layers = lens.spec.n_layers
    last = f"blocks.{n_layers - 1}.hook_resid_post"
    cache = lens.run_with_cache(prompts, ["blocks.*.attn.hook_z", last], positions="last", batch_size=batch_size)
    norm = lens.model.get_decoder().norm
    with torch.no_grad(), materialized(lens.model, norm):
        device = next(norm.parameters()).device  # the cache comes back on the CPU; the norm lives on the model's
        resid = cache[last].float().to(device)  # [b, d]
        ratio = norm(resid) / torch.where(resid.abs() > 1e-12, resid, torch.full_like(resid, 1e-12))  # [b, d]
    direction = _unembed_direction(lens, refusal, comply).to(device)  # [d]
    out = torch.zeros(n_layers, lens.spec.n_heads)
    for layer in range(n_layers):
        key = f"blocks.{layer}.attn.hook_z"
        if key not in cache:
            continue
        w_o = lens.W_O(layer).float()  # [H, dh, d], on this layer's device (layers may sit on different GPUs)
        z = cache[key].float().to(w_o.device)  # [b, H, dh]
        per_head = torch.einsum("bhk,hkd->bhd", z, w_o)  # [b, H, d]
        out[layer] = torch.einsum("bhd,bd,d->bh", per_head, ratio.to(w_o.device),
                                  direction.to(w_o.device)).mean(0).cpu()
    return out


@contextmanager
def patching(lens: Lens, layer: int, source_z: Float[Tensor, "n heads d_head"], heads: str = "all") -> Any:
    """Inside the block, the last position's ``z`` at ``layer`` comes from ``source_z``: every head
    (``heads="all"``, batch rows aligned with ``source_z``), or head ``h`` in row ``h`` of each group of
    ``n_heads`` consecutive rows (``heads="each"``; the batch is the target repeated per head)."""
    n, n_heads, d_head = source_z.shape

    def pre_hook(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0].clone()
        rows = x.shape[0] // n
        last = x[:, -1].view(n, rows, n_heads, d_head)
        src = source_z.to(device=x.device, dtype=x.dtype)
        if heads == "all":
            last[:] = src[:, None]
        else:
            for h in range(n_heads):
                last[:, h, h] = src[:, h]
        return (x, *args[1:])

    handle = lens.o_proj(layer).register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


def _repeat(batch: dict[str, Any], times: int) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, Tensor) and v.dim() > 0:
            out[k] = v.repeat_interleave(times, dim=0)
        else:
            out[k] = v
    return out


def _last_logits(lens: Lens, kwargs: dict[str, Any]) -> Tensor:
    with torch.no_grad():
        return lens.model(**kwargs, logits_to_keep=1).logits[:, -1]


def patch_heads(lens: Lens, source: Inputs, target: Inputs, refusal: Sequence[int] | None = None,
                comply: Sequence[int] | None = None, layers: Sequence[int] | None = None,
                heads: str = "each") -> Float[Tensor, "layers heads"]:
    """Mean change of the target's refusal score when each head's last-token ``z`` comes from the source run.

    ``source`` and ``target`` are paired prompt lists (same length). ``heads="all"`` patches every head of a
    layer at once (one value per layer, broadcast over the head axis)."""
    tok = lens.tokenizer
    refusal = list(refusal) if refusal is not None else opening_ids(tok, REFUSAL_OPENINGS)
    comply = list(comply) if comply is not None else opening_ids(tok, COMPLIANCE_OPENINGS)
    n_layers, n_heads = lens.spec.n_layers, lens.spec.n_heads
    chosen = list(range(n_layers)) if layers is None else list(layers)
    z_src = lens.run_with_cache(source, [f"blocks.{i}.attn.hook_z" for i in chosen], positions="last")
    tgt = lens.model_inputs(lens.prepare(target))
    n = int(tgt["input_ids"].shape[0])
    if z_src[f"blocks.{chosen[0]}.attn.hook_z"].shape[0] != n:
        raise ValueError("source and target must hold the same number of prompts")
    rows = n_heads if heads == "each" else 1
    repeated = _repeat(tgt, rows)
    # the unpatched score from the same batch shape, so a no-op patch gives exactly zero
    base = refusal_score(_last_logits(lens, repeated), refusal, comply).view(n, rows)
    out = torch.zeros(n_layers, n_heads)
    for layer in chosen:
        with patching(lens, layer, z_src[f"blocks.{layer}.attn.hook_z"], heads):
            scores = refusal_score(_last_logits(lens, repeated), refusal, comply).view(n, rows)
        effect = (scores - base).mean(0)
        out[layer] = effect if heads == "each" else effect.expand(n_heads)
    return out
