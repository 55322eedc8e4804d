"""Shape and identity of a model's language backbone."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from lensiar.arch import ArchSpec, attention_name, text_layers
from lensiar.offload import state_tensors

FINGERPRINT_SAMPLES = 64


@dataclass(frozen=True)
class ModelSpec:
    """What lensiar needs to know about a backbone; bundles are validated against it.

    ``fingerprint`` hashes the architecture, every parameter's name and shape, and 64 evenly
    strided values of each parameter rounded to bfloat16, so it tells models apart (a fine-tune
    included) cheaply and identically across devices and fp32/bf16 loading.

    What it guarantees, exactly: two models with a different class, parameter names or shapes, or any
    difference at one of the sampled positions (beyond bfloat16 rounding) get different fingerprints. It does
    *not* see a change confined to unsampled positions: a weight edited by hand off the stride (a targeted
    edit of a few values) keeps the fingerprint. A fine-tune moves essentially every value, sampled ones
    included. For an exact check, compare :func:`weights_hash` (every byte; it reads the whole model once).
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    architecture: str
    model_type: str
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict."""
        return asdict(self)

    def shape(self) -> tuple[int, int, int, int]:
        """``(n_layers, n_heads, d_head, d_model)``: what a bundle must match."""
        return (self.n_layers, self.n_heads, self.d_head, self.d_model)


def fingerprint(model: nn.Module) -> str:
    """A short hash identifying the weights and architecture of ``model`` (see :class:`ModelSpec`)."""
    digest = hashlib.sha256(type(model).__name__.encode())
    with torch.no_grad():
        for name, param in state_tensors(model):  # offloaded weights are loaded one module at a time
            digest.update(f"{name}:{tuple(param.shape)}".encode())
            flat = param.detach().reshape(-1)
            if flat.numel() == 0 or not flat.is_floating_point():
                continue
            k = min(FINGERPRINT_SAMPLES, flat.numel())
            index = torch.arange(k) * (flat.numel() - 1) // max(k - 1, 1)
            sample = flat[index.to(flat.device)].to(torch.bfloat16).float().cpu()
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of every byte of every parameter and buffer (exact; for 'weights unchanged' checks)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in state_tensors(model):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_spec(model: nn.Module, arch: ArchSpec) -> ModelSpec:
    """The :class:`ModelSpec` of ``model``'s text backbone."""
    config: Any = model.config
    text = config.get_text_config()
    layers = text_layers(model, arch)
    attn = getattr(layers[0], attention_name(layers[0], arch))
    n_heads = int(text.num_attention_heads)
    d_head = int(getattr(attn, "head_dim", None) or text.hidden_size // n_heads)
    return ModelSpec(
        n_layers=len(layers),
        n_heads=n_heads,
        n_kv_heads=int(getattr(text, "num_key_value_heads", None) or n_heads),
        d_head=d_head,
        d_model=int(text.hidden_size),
        architecture=type(model).__name__,
        model_type=str(config.model_type),
        fingerprint=fingerprint(model),
    )


def spec_json(spec: ModelSpec) -> str:
    """``spec`` as canonical JSON (sorted keys), e.g. for bundle metadata."""
    return json.dumps(spec.to_dict(), sort_keys=True)
