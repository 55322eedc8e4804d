"""One input record for text-only and image+text prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class Prompt:
    """A user turn: text, optional images, optional system prompt, optional earlier chat turns.

    ``history`` holds earlier ``{"role", "content"}`` messages placed before this turn. The
    processor's chat template renders the whole conversation, images before the text.
    """

    text: str
    images: tuple[Image.Image, ...] = ()
    system: str | None = None
    history: tuple[dict[str, Any], ...] = field(default=())

    def __init__(
        self,
        text: str,
        images: Image.Image | Sequence[Image.Image] | None = None,
        system: str | None = None,
        history: Sequence[dict[str, Any]] = (),
    ) -> None:
        if not isinstance(text, str):
            raise TypeError(f"Prompt.text must be a string, got {type(text).__name__}")
        if images is None:
            imgs: tuple[Image.Image, ...] = ()
        elif isinstance(images, Image.Image):
            imgs = (images,)
        else:
            imgs = tuple(images)
        for im in imgs:
            if not isinstance(im, Image.Image):
                raise TypeError(f"Prompt.images must be PIL images, got {type(im).__name__}")
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "images", imgs)
        object.__setattr__(self, "system", system)
        object.__setattr__(self, "history", tuple(history))

    def messages(self) -> list[dict[str, Any]]:
        """Chat messages in the HF multimodal format (content items of type image / text)."""
        out: list[dict[str, Any]] = []
        if self.system is not None:
            out.append({"role": "system", "content": self.system})
        out.extend(self.history)
        content: list[dict[str, Any]] = [{"type": "image"} for _ in self.images]
        content.append({"type": "text", "text": self.text})
        out.append({"role": "user", "content": content})
        return out


def as_prompt(item: Prompt | str) -> Prompt:
    """A :class:`Prompt` from a prompt or a plain string."""
    if isinstance(item, Prompt):
        return item
    if isinstance(item, str):
        return Prompt(item)
    raise TypeError(f"expected a lensiar.Prompt or a string, got {type(item).__name__}")
