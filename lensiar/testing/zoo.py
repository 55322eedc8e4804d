"""Tiny random-weight models with working processors, one row per family.

Text backbone everywhere: 2 layers, hidden 64, 4 heads (2 KV heads), head_dim 16, vocab 256.
Vision: 32x32 images (Qwen-VL: 56x56, its patch is 14), patch 8, 2 layers, hidden 32.
Each model is built in milliseconds from a config; no download, no file on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers as tf
from transformers import PreTrainedModel

from lensiar.processors import PixtralImageOnlyProcessor, image_only
from lensiar.testing.tokenizer import char_tokenizer, char_vocab

TEXT: dict[str, Any] = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
    pad_token_id=0, bos_token_id=1, eos_token_id=5,
)
VISION: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    image_size=32, patch_size=8,
)


def chatml(image: str, bos: str = "") -> str:
    """A ChatML chat template whose image items become ``image`` (the family's placeholder)."""
    return (
        bos + "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for c in m['content'] %}{% if c['type'] == 'image' %}" + image +
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


ID = char_vocab()


@dataclass(frozen=True)
class TinyFamily:
    """How to build one tiny model: its config, model class and processor."""

    config: Callable[[], Any]
    model_class: type[PreTrainedModel]
    processor: Callable[[], Any]
    vision: bool = True
    after_init: Callable[[PreTrainedModel], None] | None = None


def _llava() -> Any:
    return tf.LlavaConfig(
        text_config=tf.LlamaConfig(**TEXT), vision_config=tf.CLIPVisionConfig(**VISION, projection_dim=32),
        image_token_id=ID["<image>"], vision_feature_layer=-1, vision_feature_select_strategy="default",
    )


def _llava_processor() -> Any:
    ip = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    template = chatml("<image>")
    return tf.LlavaProcessor(
        image_processor=ip, tokenizer=char_tokenizer(template), patch_size=8,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=template,
    )


def _llava_next() -> Any:
    return tf.LlavaNextConfig(
        text_config=tf.LlamaConfig(**TEXT), vision_config=tf.CLIPVisionConfig(**VISION, projection_dim=32),
        image_token_id=ID["<image>"], vision_feature_layer=-1, vision_feature_select_strategy="default",
        image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]],
    )


def _llava_next_processor() -> Any:
    ip = tf.LlavaNextImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
        image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]],
    )
    template = chatml("<image>")
    return tf.LlavaNextProcessor(
        image_processor=ip, tokenizer=char_tokenizer(template), patch_size=8,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=template,
    )


def _qwen_vision() -> dict[str, Any]:
    return dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, in_chans=3)


def _qwen_text(model_type: str) -> dict[str, Any]:
    text = {k: v for k, v in TEXT.items() if k != "head_dim"}
    return dict(text, model_type=model_type, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                              "mrope_section": [2, 3, 3]})


def _qwen2_vl() -> Any:
    return tf.Qwen2VLConfig(
        text_config=_qwen_text("qwen2_vl_text"), vision_config=_qwen_vision(),
        image_token_id=ID["<|image_pad|>"], video_token_id=ID["<|video_pad|>"],
        vision_start_token_id=ID["<|vision_start|>"], vision_end_token_id=ID["<|vision_end|>"],
    )


def _qwen2_5_vl() -> Any:
    vision = dict(_qwen_vision(), hidden_size=32, intermediate_size=64, out_hidden_size=64,
                  window_size=56, fullatt_block_indexes=[1])
    vision.pop("embed_dim")
    return tf.Qwen2_5_VLConfig(
        text_config=_qwen_text("qwen2_5_vl_text"), vision_config=vision,
        image_token_id=ID["<|image_pad|>"], video_token_id=ID["<|video_pad|>"],
        vision_start_token_id=ID["<|vision_start|>"], vision_end_token_id=ID["<|vision_end|>"],
    )


def _qwen_processor(cls: type) -> Callable[[], Any]:
    def build() -> Any:
        ip = tf.Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14,
                                      merge_size=2, temporal_patch_size=2)
        template = chatml("<|vision_start|><|image_pad|><|vision_end|>")
        return image_only(cls)(image_processor=ip, tokenizer=char_tokenizer(template), video_processor=None,
                   chat_template=template)
    return build


def _idefics3(cls: type, text_cls: type = tf.LlamaConfig) -> Callable[[], Any]:
    def build() -> Any:
        return cls(text_config=text_cls(**TEXT), vision_config=dict(VISION, model_type="idefics3_vision"),
                   image_token_id=ID["<image>"], scale_factor=2)
    return build


def _idefics3_processor() -> Any:
    ip = tf.Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 32},
                                   max_image_size={"longest_edge": 32})
    template = chatml("<image>")
    return tf.Idefics3Processor(image_processor=ip, tokenizer=char_tokenizer(template), image_seq_len=4,
                                chat_template=template)


def _smolvlm() -> Any:
    return tf.SmolVLMConfig(text_config=tf.LlamaConfig(**TEXT),
                            vision_config=dict(VISION, model_type="smolvlm_vision"),
                            image_token_id=ID["<image>"], scale_factor=2)


def _smolvlm_processor() -> Any:
    ip = tf.SmolVLMImageProcessor(do_image_splitting=False, size={"longest_edge": 32},
                                  max_image_size={"longest_edge": 32})
    template = chatml("<image>")
    return image_only(tf.SmolVLMProcessor)(image_processor=ip, tokenizer=char_tokenizer(template), video_processor=None,
                               image_seq_len=4, chat_template=template)


def _paligemma() -> Any:
    return tf.PaliGemmaConfig(
        text_config=dict(TEXT, model_type="gemma"), vision_config=dict(VISION, model_type="siglip_vision_model"),
        image_token_id=ID["<image>"], projection_dim=64,
    )


def _paligemma_processor() -> Any:
    ip = tf.SiglipImageProcessor(size={"height": 32, "width": 32})
    ip.image_seq_length = 16
    template = chatml("")
    return tf.PaliGemmaProcessor(image_processor=ip, tokenizer=char_tokenizer(template), chat_template=template)


def _gemma3() -> Any:
    return tf.Gemma3Config(
        text_config=dict(TEXT, model_type="gemma3_text", sliding_window=64),
        vision_config=dict(VISION, model_type="siglip_vision_model"),
        mm_tokens_per_image=4, image_token_id=ID["<image_soft_token>"],
        boi_token_id=ID["<start_of_image>"], eoi_token_id=ID["<end_of_image>"],
    )


def _gemma3_processor() -> Any:
    ip = tf.Gemma3ImageProcessor(size={"height": 32, "width": 32})
    template = chatml("<start_of_image>")
    tok = char_tokenizer(template, extra_special_tokens={
        "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"})
    return tf.Gemma3Processor(image_processor=ip, tokenizer=tok, chat_template=template, image_seq_length=4)


def _gemma3_init(model: PreTrainedModel) -> None:
    """Random init leaves the image projection at zero, which makes the image a no-op."""
    proj = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        proj.normal_(0.0, 0.2)


def _internvl() -> Any:
    text = {k: v for k, v in TEXT.items() if k != "head_dim"}
    return tf.InternVLConfig(
        text_config=dict(text, model_type="qwen2"),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=[32, 32], patch_size=[8, 8], model_type="internvl_vision"),
        image_token_id=ID["<IMG_CONTEXT>"], downsample_ratio=0.5,
    )


def _internvl_processor() -> Any:
    ip = tf.GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=False)
    template = chatml("<IMG_CONTEXT>")
    tok = char_tokenizer(template, extra_special_tokens={
        "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>"})
    return image_only(tf.InternVLProcessor)(image_processor=ip, tokenizer=tok, video_processor=None, image_seq_length=4,
                                chat_template=template)


def _mistral3() -> Any:
    return tf.Mistral3Config(
        text_config=dict(TEXT, model_type="mistral"),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, head_dim=16, model_type="pixtral"),
        image_token_index=ID["[IMG]"], spatial_merge_size=2, vision_feature_layer=-1,
    )


def _mistral3_processor() -> Any:
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    ip = PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size=8)
    return PixtralImageOnlyProcessor(ip, char_tokenizer(chatml("[IMG]")), patch_size=8, spatial_merge_size=2)


def _mllama() -> Any:
    text = dict(TEXT, model_type="mllama_text_model", num_hidden_layers=2, cross_attention_layers=[1],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    text.pop("head_dim")
    return tf.MllamaConfig(
        text_config=text,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8, max_num_tiles=4,
                           vision_output_dim=64, intermediate_layers_indices=[0], model_type="mllama_vision_model"),
        image_token_index=ID["<|image|>"],
    )


def _mllama_processor() -> Any:
    ip = tf.MllamaImageProcessor(size={"height": 32, "width": 32}, max_image_tiles=4)
    template = chatml("<|image|>")
    return tf.MllamaProcessor(image_processor=ip, tokenizer=char_tokenizer(template), chat_template=template)


def _mllama_init(model: PreTrainedModel) -> None:
    """The cross-attention tanh gates start at zero, which makes the image a no-op."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                param.fill_(1.0)


def _text_processor() -> Any:
    return char_tokenizer(chatml(""))


FAMILIES: dict[str, TinyFamily] = {
    "llava": TinyFamily(_llava, tf.LlavaForConditionalGeneration, _llava_processor),
    "llava_next": TinyFamily(_llava_next, tf.LlavaNextForConditionalGeneration, _llava_next_processor),
    "qwen2_vl": TinyFamily(_qwen2_vl, tf.Qwen2VLForConditionalGeneration, _qwen_processor(tf.Qwen2VLProcessor)),
    "qwen2_5_vl": TinyFamily(_qwen2_5_vl, tf.Qwen2_5_VLForConditionalGeneration,
                             _qwen_processor(tf.Qwen2_5_VLProcessor)),
    "idefics3": TinyFamily(_idefics3(tf.Idefics3Config), tf.Idefics3ForConditionalGeneration, _idefics3_processor),
    "smolvlm": TinyFamily(_smolvlm, tf.SmolVLMForConditionalGeneration, _smolvlm_processor),
    "paligemma": TinyFamily(_paligemma, tf.PaliGemmaForConditionalGeneration, _paligemma_processor),
    "gemma3": TinyFamily(_gemma3, tf.Gemma3ForConditionalGeneration, _gemma3_processor, after_init=_gemma3_init),
    "internvl": TinyFamily(_internvl, tf.InternVLForConditionalGeneration, _internvl_processor),
    "mistral3": TinyFamily(_mistral3, tf.Mistral3ForConditionalGeneration, _mistral3_processor),
    "mllama": TinyFamily(_mllama, tf.MllamaForConditionalGeneration, _mllama_processor, after_init=_mllama_init),
    "llama": TinyFamily(lambda: tf.LlamaConfig(**TEXT), tf.LlamaForCausalLM, _text_processor, vision=False),
    "qwen2": TinyFamily(lambda: tf.Qwen2Config(**TEXT), tf.Qwen2ForCausalLM, _text_processor, vision=False),
    "gemma2": TinyFamily(lambda: tf.Gemma2Config(**TEXT, sliding_window=64), tf.Gemma2ForCausalLM,
                         _text_processor, vision=False),
}


def list_tiny_models() -> list[str]:
    """Names accepted by :func:`tiny_model`."""
    return sorted(FAMILIES)


def tiny_model(name: str, seed: int = 0) -> tuple[PreTrainedModel, Any]:
    """A small random-weight model of family ``name`` and its processor (tokenizer for text-only).

    Deterministic under ``seed``; fp32, eval mode, eager attention.
    """
    if name not in FAMILIES:
        raise KeyError(f"unknown tiny model {name!r}; available: {', '.join(list_tiny_models())}")
    family = FAMILIES[name]
    config = family.config()
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = family.model_class(config).eval()
    if family.after_init is not None:
        torch.manual_seed(seed + 1)
        family.after_init(model)
    return model, family.processor()
