"""A SmolVLM-class VLM assembled around the real SmolLM2-135M-Instruct weights.

The language backbone is the real network (its state dict loads into ``model.text_model`` with every
key matching); the vision tower and connector are **random** (a tiny SigLIP: 64-d, 2 layers, 64 px
images, patch 16, 4 image tokens after pixel shuffle). It shows lensiar's probing and revision on a
real language model inside a real VLM class; the image carries no meaning until a vision tower is
trained (the model organism does that).
"""

from __future__ import annotations

from typing import Any

import torch
import transformers as tf

from lensiar.models import smollm2_path
from lensiar.processors import image_only

IMAGE_TOKENS = ("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>")
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

#: SmolLM2's ChatML template (same default system prompt) extended with image content items.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\n"
    + DEFAULT_SYSTEM + "<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def vision_config(image_size: int = 64, patch_size: int = 16, hidden: int = 64, layers: int = 2) -> dict[str, Any]:
    return dict(model_type="smolvlm_vision", hidden_size=hidden, intermediate_size=hidden * 2,
                num_hidden_layers=layers, num_attention_heads=4, image_size=image_size, patch_size=patch_size)


def smolvlm_processor(tokenizer: Any, image_size: int = 64, image_seq_len: int = 4) -> Any:
    ip = tf.SmolVLMImageProcessor(do_image_splitting=False, size={"longest_edge": image_size},
                                  max_image_size={"longest_edge": image_size})
    tokenizer.chat_template = CHAT_TEMPLATE
    return image_only(tf.SmolVLMProcessor)(image_processor=ip, tokenizer=tokenizer, video_processor=None,
                                           image_seq_len=image_seq_len, chat_template=CHAT_TEMPLATE)


def smolvlm_around_smollm2(seed: int = 0, vision: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(SmolVLMForConditionalGeneration with the real SmolLM2 backbone and a random vision tower, processor)."""
    base_path = smollm2_path()
    lm = tf.AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, local_files_only=True)
    tokenizer = tf.AutoTokenizer.from_pretrained(base_path, local_files_only=True)
    tokenizer.add_special_tokens({"additional_special_tokens": list(IMAGE_TOKENS)})
    vision = vision or vision_config()
    text_config = lm.config
    config = tf.SmolVLMConfig(text_config=text_config.to_dict(), vision_config=vision, scale_factor=2,
                              image_token_id=int(tokenizer.convert_tokens_to_ids("<image>")),  # type: ignore[arg-type]
                              tie_word_embeddings=True)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    vlm = tf.SmolVLMForConditionalGeneration(config).eval()
    vlm.model.text_model.load_state_dict(lm.model.state_dict())
    vlm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():  # new rows: the mean embedding, so the new tokens never dominate the logits
        emb = vlm.get_input_embeddings().weight
        emb[lm.config.vocab_size :] = emb[: lm.config.vocab_size].mean(0)
    vlm.lm_head.weight = vlm.get_input_embeddings().weight
    vlm.generation_config.pad_token_id = tokenizer.pad_token_id
    vlm.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    image_seq_len = (vision["image_size"] // vision["patch_size"]) ** 2 // 4
    return vlm, smolvlm_processor(tokenizer, vision["image_size"], image_seq_len)
