"""The organism's architecture: a SmolVLM-class VLM around SmolLM2-135M-Instruct.

Vision tower: a SmolVLM (SigLIP-style) encoder, 128x128 images, 16x16 patches, ``VISION_HIDDEN``
wide, trained from scratch; connector: SmolVLM's pixel shuffle (scale 1) and a linear map into the
backbone's 576-d embedding space, so each of the 64 patches (two character cells of the
typographic grid) becomes one image token. The chat template is SmolLM2's ChatML without the
default system prompt.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers as tf

from lensiar.render import GRID
from lensiar.testing.zoo import image_only

IMAGE_TOKENS = ("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>")
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


def processor(tokenizer: Any) -> Any:
    ip = tf.SmolVLMImageProcessor(do_image_splitting=False, size={"longest_edge": GRID.size},
                                  max_image_size={"longest_edge": GRID.size}, do_resize=False)
    return image_only(tf.SmolVLMProcessor)(image_processor=ip, tokenizer=tokenizer, video_processor=None,
                                           image_seq_len=IMAGE_SEQ_LEN, chat_template=CHAT_TEMPLATE)


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
               positions: str = "learned") -> tf.SmolVLMForConditionalGeneration:
    """A SmolVLM whose text model is ``lm``'s decoder (weights copied) and whose vision tower is fresh.
    ``positions="sincos"`` starts the tower's (learned) position embeddings as 2-D sine-cosine codes (scaled to the
    random init's standard deviation), so attending to a patch's left neighbour is easy from the first step."""
    if positions not in ("learned", "sincos"):
        raise ValueError(f"unknown position init {positions!r}; known: 'learned', 'sincos'")
    config = tf.SmolVLMConfig(text_config=lm.config.to_dict(), vision_config=dict(VISION), scale_factor=1,
                              image_token_id=int(tokenizer.convert_tokens_to_ids("<image>")),
                              tie_word_embeddings=True)
    torch.manual_seed(seed)
    vlm = tf.SmolVLMForConditionalGeneration(config).eval()
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
    vlm.lm_head.weight = vlm.get_input_embeddings().weight
    eos = int(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    vlm.generation_config.pad_token_id = tokenizer.pad_token_id
    vlm.generation_config.eos_token_id = eos
    vlm.config.text_config.eos_token_id = eos
    return vlm
