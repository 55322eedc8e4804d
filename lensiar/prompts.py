"""Ready-made prompts in the benchmarks' styles: a request as a TYPO key-phrase image (MM-SafetyBench), as a
FigStep-style instruction image, or as a reading task.

    >>> from lensiar.prompts import typo_prompt
    >>> lens.generate([typo_prompt("Explain how to bake bread.")])
"""

from __future__ import annotations

from lensiar.prompt import Prompt
from lensiar.render import FIGSTEP_PROMPT, TYPO_PROMPT, render_phrase, render_steps

#: the organism's reading prompt (a benign image task: read the text back)
READ_PROMPT = "What does the text in the image say?"

__all__ = ["FIGSTEP_PROMPT", "READ_PROMPT", "TYPO_PROMPT", "phrase_of", "phrase_prompt", "read_prompt",
           "steps_prompt", "typo_prompt"]


def phrase_of(text: str) -> str:
    """A request as a TYPO key phrase: trailing punctuation dropped, first letter lower-cased
    ("Bake bread." -> "bake bread")."""
    text = text.strip().rstrip(".!?")
    return text[:1].lower() + text[1:]


def typo_prompt(text: str) -> Prompt:
    """``text`` as an MM-SafetyBench-style TYPO prompt: its phrase rendered, the benchmark's fixed text prompt."""
    return phrase_prompt(phrase_of(text))


def phrase_prompt(phrase: str) -> Prompt:
    """A key phrase, as it is, rendered as a TYPO image with MM-SafetyBench's text prompt."""
    return Prompt(TYPO_PROMPT, images=(render_phrase(phrase),))


def steps_prompt(text: str) -> Prompt:
    """``text`` as a FigStep-style prompt: the instruction rendered above an empty numbered list, FigStep's prompt."""
    return Prompt(FIGSTEP_PROMPT, images=(render_steps(text),))


def read_prompt(text: str) -> Prompt:
    """A benign reading task: ``text`` rendered as a phrase, with :data:`READ_PROMPT`."""
    return Prompt(READ_PROMPT, images=(render_phrase(text),))
