"""Loading a checkpoint's processor, image-only where the video half needs torchvision.

transformers' Qwen2-VL, Qwen2.5-VL, SmolVLM and InternVL processors also build a video processor, and
Pixtral's (Mistral 3) imports torchvision outright. On a machine without torchvision (CPU-only installs,
this project's CI) :func:`load_processor` falls back to the same processor class with no video processor,
or for Pixtral to :class:`PixtralImageOnlyProcessor`; images and text behave as in the real processor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def image_only(cls: type) -> type:
    """``cls`` accepting ``video_processor=None`` and saving without it."""

    class ImageOnly(cls):  # type: ignore[valid-type,misc]
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument is None and "video" in argument_name:
                return type(None)
            return super().check_argument_for_proper_class(argument_name, argument)

        @classmethod
        def get_attributes(cls) -> list[str]:
            return [a for a in super().get_attributes() if "video" not in a]

        def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any:
            return self.tokenizer.apply_chat_template(conversation, **kwargs)

    ImageOnly.__name__ = ImageOnly.__qualname__ = cls.__name__
    return ImageOnly


class PixtralImageOnlyProcessor:
    """Mistral 3's image path without torchvision: it expands each ``[IMG]`` into the rows of ``[IMG]`` tokens
    closed by ``[IMG_BREAK]`` / ``[IMG_END]`` that transformers' ``PixtralProcessor`` writes."""

    def __init__(self, image_processor: Any, tokenizer: Any, patch_size: int, spatial_merge_size: int = 1) -> None:
        self.image_processor, self.tokenizer = image_processor, tokenizer
        self.chat_template = tokenizer.chat_template
        self.patch_size, self.spatial_merge_size = patch_size, spatial_merge_size
        self.unit = patch_size * spatial_merge_size

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any:
        """The tokenizer's chat template applied to ``conversation``."""
        return self.tokenizer.apply_chat_template(conversation, **kwargs)

    def __call__(self, text: list[str] | str, images: Any = None, **kwargs: Any) -> Any:
        """Token ids (each ``[IMG]`` expanded to the image's rows of patches), ``pixel_values``, ``image_sizes``."""
        texts = [text] if isinstance(text, str) else list(text)
        tensors = kwargs.pop("return_tensors", "pt")
        if images is None:
            return self.tokenizer(texts, return_tensors=tensors, **kwargs)
        flat = [im for group in images for im in (group if isinstance(group, list | tuple) else [group])]
        pixels = self.image_processor(flat, return_tensors="pt")
        sizes = iter(pixels["image_sizes"].tolist())
        expanded = []
        for t in texts:
            parts = t.split("[IMG]")
            out = parts[0]
            for part in parts[1:]:
                h, w = next(sizes)
                rows, cols = h // self.unit, w // self.unit
                out += "[IMG_BREAK]".join(["[IMG]" * cols] * rows) + "[IMG_END]" + part
            expanded.append(out)
        enc = self.tokenizer(expanded, return_tensors=tensors, **kwargs)
        enc["pixel_values"], enc["image_sizes"] = pixels["pixel_values"], pixels["image_sizes"]
        return enc

    def save_pretrained(self, directory: str | Path) -> None:
        """Tokenizer, image processor and a ``processor_config.json`` naming ``PixtralProcessor``, as transformers
        writes them (so a machine with torchvision loads the real processor)."""
        path = Path(directory)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        config = {"processor_class": "PixtralProcessor", "patch_size": self.patch_size,
                  "spatial_merge_size": self.spatial_merge_size, "image_token": "[IMG]",
                  "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]"}
        (path / "processor_config.json").write_text(json.dumps(config, indent=2) + "\n")

    def batch_decode(self, *args: Any, **kwargs: Any) -> Any:
        """The tokenizer's ``batch_decode``."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        """The tokenizer's ``decode``."""
        return self.tokenizer.decode(*args, **kwargs)


def _processor_config(path: Path) -> dict[str, Any]:
    for name in ("processor_config.json", "preprocessor_config.json"):
        if (path / name).is_file():
            data = json.loads((path / name).read_text())
            return data if isinstance(data, dict) else {}
    return {}


def has_processor(path: Path) -> bool:
    """Whether ``path`` holds a multimodal processor (not only a tokenizer)."""
    return (path / "processor_config.json").is_file() or (path / "preprocessor_config.json").is_file()


def _image_only_fallback(path: Path, **kwargs: Any) -> Any:
    import transformers

    config = _processor_config(path)
    name = str(config.get("processor_class", ""))
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, **kwargs)
    image_processor = transformers.AutoImageProcessor.from_pretrained(path, **kwargs)
    if name == "PixtralProcessor":
        return PixtralImageOnlyProcessor(image_processor, tokenizer, int(config.get("patch_size", 16)),
                                         int(config.get("spatial_merge_size", 1)))
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ValueError(f"{path}: unknown processor class {name!r}")
    init_keys = {k: v for k, v in config.items() if k not in ("processor_class", "image_processor", "video_processor",
                                                               "auto_map")}
    template = (path / "chat_template.jinja")
    if template.is_file():
        init_keys["chat_template"] = template.read_text()
    return image_only(cls)(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **init_keys)


def load_tokenizer(path: str | Path, **kwargs: Any) -> Any:
    """The tokenizer in ``path``, of the class its ``tokenizer_config.json`` names where transformers has it
    (``AutoTokenizer`` may substitute the model type's own class, which can tokenize differently)."""
    import transformers

    config = Path(path) / "tokenizer_config.json"
    name = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    return (cls or transformers.AutoTokenizer).from_pretrained(path, **kwargs)


def load_processor(path: str | Path, **kwargs: Any) -> Any:
    """The processor saved in ``path`` (``AutoProcessor``), its tokenizer for a text-only checkpoint, or an
    image-only processor where the full one needs torchvision (see the module docstring)."""
    import transformers

    path = Path(path)
    if not has_processor(path):
        return load_tokenizer(path, **kwargs)
    try:
        return transformers.AutoProcessor.from_pretrained(path, **kwargs)
    except (ImportError, ValueError, TypeError, AttributeError, OSError) as error:
        if "torchvision" not in str(error).lower() and "video" not in str(error).lower():
            raise
        return _image_only_fallback(path, **kwargs)
