"""Where each architecture keeps its text layers, heads and image tokens: one row per family.

Adding a family is one row in :data:`ARCHITECTURES`, keyed by the top-level ``config.model_type``.
Paths are attribute paths from the top-level HF model (``XForConditionalGeneration`` or
``XForCausalLM``); per-layer names are relative to one decoder layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ArchSpec:
    """How lensiar reads one architecture family.

    Attributes:
        layers: path from the top model to the ``ModuleList`` of text decoder layers.
        attention: names of the attention submodule in a layer, tried in order (Mllama's
            cross-attention layers use ``cross_attn`` instead of ``self_attn``).
        o_proj: name of the output projection inside the attention module; its input is ``hook_z``.
        attn_out: module in the layer whose output is the attention's contribution to the residual
            (Gemma 2/3 add a post-attention norm); ``None`` means the attention module itself.
        mlp_out: module in the layer whose output is the MLP's contribution to the residual.
        image_token: config attribute holding the image placeholder token id (``None``: text-only).
        extra_inputs: model inputs beyond ids/mask/pixels that must travel with a batch.
        position_ids: pass ``cumsum(attention_mask) - 1`` as position ids so left padding does not
            shift positions; ``False`` where the model derives its own (Qwen-VL's 3-D rope).
        drop_inputs: processor outputs the forward pass must not receive (PaliGemma's ``labels``).
        image_only_attention: an attention module whose whole layer is skipped when the batch has no
            image (Mllama's ``cross_attn``); such layers have no hook values on text-only batches.
    """

    layers: str
    attention: tuple[str, ...] = ("self_attn",)
    o_proj: str = "o_proj"
    attn_out: str | None = None
    mlp_out: str = "mlp"
    image_token: str | None = "image_token_id"
    extra_inputs: tuple[str, ...] = ()
    position_ids: bool = True
    drop_inputs: tuple[str, ...] = ()
    image_only_attention: str | None = None
    processor_needs_images: bool = False

    @property
    def vision(self) -> bool:
        """Whether the family takes images (it has an image token)."""
        return self.image_token is not None


_CAUSAL = ArchSpec(layers="model.layers", image_token=None)
_GEMMA_TEXT = ArchSpec(layers="model.layers", image_token=None, attn_out="post_attention_layernorm",
                       mlp_out="post_feedforward_layernorm")
_LM = "model.language_model.layers"
_QWEN_VL = ArchSpec(layers=_LM, extra_inputs=("mm_token_type_ids",), position_ids=False)

#: ``config.model_type`` -> how to read it
ARCHITECTURES: dict[str, ArchSpec] = {
    # text-only causal LMs
    "llama": _CAUSAL,
    "mistral": _CAUSAL,
    "qwen2": _CAUSAL,
    "qwen3": _CAUSAL,
    "gemma": _CAUSAL,
    "gemma2": _GEMMA_TEXT,
    "gemma3_text": _GEMMA_TEXT,
    # vision-language models
    "llava": ArchSpec(layers=_LM),
    "llava_next": ArchSpec(layers=_LM),
    "llava_onevision": ArchSpec(layers=_LM),
    "qwen2_vl": _QWEN_VL,
    "qwen2_5_vl": _QWEN_VL,
    "qwen3_vl": _QWEN_VL,
    "idefics3": ArchSpec(layers="model.text_model.layers"),
    "smolvlm": ArchSpec(layers="model.text_model.layers"),
    "paligemma": ArchSpec(layers=_LM, drop_inputs=("labels",), processor_needs_images=True),
    "gemma3": ArchSpec(layers=_LM, attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm"),
    "internvl": ArchSpec(layers=_LM),
    "mistral3": ArchSpec(layers=_LM, image_token="image_token_index"),
    "mllama": ArchSpec(layers=_LM, attention=("self_attn", "cross_attn"), image_token="image_token_index",
                       image_only_attention="cross_attn"),
}


class UnsupportedArchitectureError(ValueError):
    """The model's family has no row in :data:`ARCHITECTURES`."""


def arch_for(model: nn.Module) -> ArchSpec:
    """The :class:`ArchSpec` row for ``model`` (looked up by ``model.config.model_type``)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"lensiar has no architecture row for model_type={model_type!r} ({type(model).__name__}). "
            f"Supported: {', '.join(sorted(ARCHITECTURES))}. To add a family, add one ArchSpec row to "
            "lensiar.arch.ARCHITECTURES (path to the text layers, attention module name, image token attribute)."
        )
    return ARCHITECTURES[model_type]


def get_path(root: Any, path: str) -> Any:
    """``root.a.b.c`` for ``path="a.b.c"`` (works on modules and on nnsight envoys)."""
    for part in path.split("."):
        root = getattr(root, part)
    return root


def attention_name(layer: nn.Module, arch: ArchSpec) -> str:
    """Name of the attention submodule present in ``layer``."""
    for name in arch.attention:
        if hasattr(layer, name):
            return name
    raise UnsupportedArchitectureError(
        f"decoder layer {type(layer).__name__} has none of the attention modules {arch.attention}"
    )


def text_layers(model: nn.Module, arch: ArchSpec | None = None) -> nn.ModuleList:
    """The text decoder layers of ``model``."""
    layers = get_path(model, (arch or arch_for(model)).layers)
    assert isinstance(layers, nn.ModuleList)
    return layers


def image_token_id(model: nn.Module, arch: ArchSpec) -> int | None:
    """The image placeholder token id, or ``None`` for a text-only model."""
    if arch.image_token is None:
        return None
    value = getattr(model.config, arch.image_token, None)
    return None if value is None else int(value)


@dataclass(frozen=True)
class BakeSpec:
    """How a text backbone can carry a revision as biases that ``from_pretrained`` rebuilds.

    Attributes:
        attention_flag: text-config flag that gives the attention projections biases.
        attention_modules: the projections that flag switches on (all get a bias; o_proj's holds the revision).
        mlp_flag: text-config flag that gives the MLP projections biases, where the MLP output is the
            last thing added to the layer's residual (so a layer-level revision is exact there).
        mlp_modules: the projections that flag switches on; the last one holds the revision.
    """

    attention_flag: str | None = None
    attention_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    mlp_flag: str | None = None
    mlp_modules: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")


#: text ``model_type`` -> where a baked revision goes (families without a row cannot be baked)
BAKE: dict[str, BakeSpec] = {
    "llama": BakeSpec(attention_flag="attention_bias", mlp_flag="mlp_bias"),
    "gemma": BakeSpec(attention_flag="attention_bias"),
    "gemma2": BakeSpec(attention_flag="attention_bias"),  # a post-MLP norm makes an MLP bias inexact
    "gemma3_text": BakeSpec(attention_flag="attention_bias"),
}
