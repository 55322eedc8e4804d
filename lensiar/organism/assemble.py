"""The organism's architecture: a SmolVLM-class VLM around SmolLM2-135M-Instruct.

Vision tower: a SmolVLM (SigLIP-style) encoder, 128x128 images, 16x16 patches, ``VISION_HIDDEN``
wide, trained from scratch; connector: SmolVLM's pixel shuffle (scale 1) and a linear map into the
backbone's 576-d embedding space, so each of the 64 patches (two character cells of the
typographic grid) becomes one image token; or, with ``slots=2`` (recipe 21 on), :class:`SlotConnector`, a linear
map to two 576-d vectors per patch, so each patch becomes two image tokens in reading order (128 per image). The
chat template is SmolLM2's ChatML without the default system prompt.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers as tf
from jaxtyping import Float
from torch import Tensor, nn

from lensiar.processors import image_only
from lensiar.render import GRID

IMAGE_TOKENS = ("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>")
#: the filler of a two-slot patch's unused second slot (reader scheme "ordered"): ``<end_of_utterance>``, a new row
#: the ChatML template never emits, set to a seeded random direction of the embeddings' mean norm. (SmolLM2's own
#: unused specials such as ``<empty_output>`` share one untrained vector with the byte tokens, so no classifier tied
#: to the embeddings can tell them apart.)
NULL = "<end_of_utterance>"
PATCH = 16
IMAGE_SEQ_LEN = (GRID.size // PATCH) ** 2
VISION = dict(model_type="smolvlm_vision", hidden_size=192, intermediate_size=768, num_hidden_layers=3,
              num_attention_heads=3, image_size=GRID.size, patch_size=PATCH)

#: ChatML (SmolLM2's) with image items; no default system prompt
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizer_with_image_tokens(base_tokenizer: Any) -> Any:
    base_tokenizer.add_special_tokens({"additional_special_tokens": list(IMAGE_TOKENS)})
    base_tokenizer.chat_template = CHAT_TEMPLATE
    return base_tokenizer


def processor(tokenizer: Any, slots: int = 1) -> Any:
    """The organism's processor: ``IMAGE_SEQ_LEN * slots`` ``<image>`` tokens per image."""
    ip = tf.SmolVLMImageProcessor(do_image_splitting=False, size={"longest_edge": GRID.size},
                                  max_image_size={"longest_edge": GRID.size}, do_resize=False)
    return image_only(tf.SmolVLMProcessor)(image_processor=ip, tokenizer=tokenizer, video_processor=None,
                                           image_seq_len=IMAGE_SEQ_LEN * slots, chat_template=CHAT_TEMPLATE)


class _Projection(nn.Module):
    def __init__(self, width: int, out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, out, bias=False)


class SlotConnector(nn.Module):
    """SmolVLM's connector at scale 1, but each patch feature becomes ``slots`` consecutive image tokens:
    ``[b, patches, width] -> [b, patches * slots, d_model]`` (the state-dict keys are SmolVLM's,
    ``modality_projection.proj.weight``, of shape ``[slots * d_model, width]``)."""

    def __init__(self, width: int, d_model: int, slots: int) -> None:
        super().__init__()
        self.slots, self.d_model = slots, d_model
        self.modality_projection = _Projection(width, slots * d_model)

    def forward(self, hidden: Float[Tensor, "b p w"]) -> Float[Tensor, "b ps d"]:
        out = self.modality_projection.proj(hidden)
        return out.view(hidden.shape[0], hidden.shape[1] * self.slots, self.d_model)


def use_slots(vlm: tf.SmolVLMForConditionalGeneration, slots: int) -> None:
    """Give ``vlm`` a fresh :class:`SlotConnector` when ``slots > 1`` and record it in ``config.slots_per_patch``
    (saved with the config, read back by :func:`from_checkpoint`)."""
    if slots < 1:
        raise ValueError(f"slots per patch must be at least 1, got {slots}")
    if slots > 1 and vlm.config.scale_factor != 1:
        raise ValueError(f"a slot connector replaces a scale-1 pixel shuffle; this VLM's scale is {vlm.config.scale_factor}")
    vlm.config.slots_per_patch = slots
    if slots > 1:
        stock = vlm.model.connector.modality_projection.proj.weight.detach()  # [d_model, width]
        vlm.model.connector = SlotConnector(stock.shape[1], stock.shape[0], slots)
        std = float(stock.std())
        with torch.no_grad():  # the stock connector's init scale
            vlm.model.connector.modality_projection.proj.weight.normal_(0.0, std)


def from_checkpoint(path: Any) -> tf.SmolVLMForConditionalGeneration:
    """An organism-shaped VLM saved with ``save_pretrained``, its :class:`SlotConnector` rebuilt where its config
    says ``slots_per_patch > 1`` (the stock class would not know the connector's shape)."""
    from pathlib import Path

    from safetensors.torch import load_file

    config = tf.SmolVLMConfig.from_pretrained(path, local_files_only=True)
    slots = int(getattr(config, "slots_per_patch", 1))
    if slots == 1:
        return tf.SmolVLMForConditionalGeneration.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    vlm = tf.SmolVLMForConditionalGeneration(config)
    use_slots(vlm, slots)
    state: dict[str, Tensor] = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        state |= load_file(str(file))
    missing, unexpected = vlm.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ValueError(f"{path}: checkpoint does not match the organism (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    vlm.lm_head.weight = vlm.get_input_embeddings().weight
    return vlm.float()


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """``[side * side, dim]`` 2-D sine-cosine position codes, row-major: the first half codes the row, the second
    the column, each as sines then cosines over ``dim // 4`` geometric frequencies (as in MAE's ViT)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    grid = torch.arange(side, dtype=torch.float64)
    rows, cols = torch.meshgrid(grid, grid, indexing="ij")

    def code(pos: torch.Tensor) -> torch.Tensor:
        angle = pos.flatten()[:, None] * omega[None, :]
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    return torch.cat([code(rows), code(cols)], dim=1).float()


def vlm_around(lm: tf.PreTrainedModel, tokenizer: Any, seed: int = 0,
               positions: str = "learned", slots: int = 1) -> tf.SmolVLMForConditionalGeneration:
    """A SmolVLM whose text model is ``lm``'s decoder (weights copied) and whose vision tower is fresh.
    ``positions="sincos"`` starts the tower's (learned) position embeddings as 2-D sine-cosine codes (scaled to the
    random init's standard deviation), so attending to a patch's left neighbour is easy from the first step.
    ``slots=2`` gives it a :class:`SlotConnector` (two image tokens per patch)."""
    if positions not in ("learned", "sincos"):
        raise ValueError(f"unknown position init {positions!r}; known: 'learned', 'sincos'")
    config = tf.SmolVLMConfig(text_config=lm.config.to_dict(), vision_config=dict(VISION), scale_factor=1,
                              image_token_id=int(tokenizer.convert_tokens_to_ids("<image>")),
                              tie_word_embeddings=True)
    torch.manual_seed(seed)
    vlm = tf.SmolVLMForConditionalGeneration(config).eval()
    use_slots(vlm, slots)
    if positions == "sincos":
        with torch.no_grad():
            table = vlm.model.vision_model.embeddings.position_embedding.weight
            codes = sincos_2d(GRID.size // PATCH, table.shape[1])
            table.copy_(codes * (table.std() / codes.std()))
    vlm.model.text_model.load_state_dict(lm.model.state_dict())
    vocab = lm.config.vocab_size
    vlm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():  # new rows: the mean embedding, so the new tokens never dominate the logits
        emb = vlm.get_input_embeddings().weight
        emb[vocab:] = emb[:vocab].mean(0)
        if slots > 1:  # NULL must be a direction of its own (see NULL)
            direction = torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(seed))
            emb[int(tokenizer.convert_tokens_to_ids(NULL))] = direction * emb[:vocab].norm(dim=1).mean() / direction.norm()
    vlm.lm_head.weight = vlm.get_input_embeddings().weight
    eos = int(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    vlm.generation_config.pad_token_id = tokenizer.pad_token_id
    vlm.generation_config.eos_token_id = eos
    vlm.config.text_config.eos_token_id = eos
    return vlm
