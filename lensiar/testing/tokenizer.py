"""A character-level tokenizer for tiny random models, built offline with `tokenizers`.

Every printable ASCII character is one token; special tokens (chat markers, image placeholders of
every supported family) are whole tokens. Vocabulary size stays below 256 so it fits the tiny
configs.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

#: Special tokens, in id order. The image placeholders of all families share one vocabulary.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>",
    "<image>",                                                  # llava, llava_next, idefics3, smolvlm, paligemma
    "<fake_token_around_image>", "<global-img>", "<end_of_utterance>",  # idefics3 / smolvlm
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",  # qwen-vl
    "<start_of_image>", "<end_of_image>", "<image_soft_token>",  # gemma3
    "<img>", "</img>", "<IMG_CONTEXT>", "<video>",              # internvl
    "[IMG]", "[IMG_BREAK]", "[IMG_END]",                        # mistral3 / pixtral
    "<|image|>", "<|python_tag|>",                              # mllama
    "<bos>", "<eos>",
)

CHARACTERS: str = string.printable[:95] + "\n"


def char_vocab() -> dict[str, int]:
    """Token -> id for the special tokens followed by the characters."""
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *CHARACTERS):
        vocab.setdefault(token, len(vocab))
    return vocab


def char_tokenizer(chat_template: str | None = None, extra_special_tokens: dict[str, str] | None = None,
                   **special: str) -> PreTrainedTokenizerFast:
    """A fast tokenizer over :func:`char_vocab` with pad/bos/eos set (overridable via ``special``);
    ``extra_special_tokens`` names family tokens (``boi_token`` -> ``tokenizer.boi_token(_id)``), saved with it."""
    vocab = char_vocab()
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    names = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>"}
    names.update(special)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in names.values()],
        chat_template=chat_template,
        extra_special_tokens=extra_special_tokens or {},
        **names,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    return tokenizer
