"""How well does the stage-S backbone learn to respell an image-token copy, by answer layout and LoRA rank?

The organism's image answers fail mostly at one step: the plain-words line after the copy ("describe the game of
monopoly" copied right, respelled "describe the game ofonsai"). This pilot isolates that step on text, as recipe
v29's text-only respelling examples teach it: the prompt is the chat-templated TYPO or FigStep prompt, then the
image-token copy of a phrase (:func:`lensiar.organism.reader.image_spelling`) and ``":\\n"``; the answer is
trained. A fresh LoRA on the committed stage-S backbone is tuned for one epoch on ``--n`` train-split phrases
(:func:`lensiar.organism.recipe.respell_set`: Alpaca activities and spans, and train-split harmful behaviours
read, not answered), then greedy decoding respells the organism table's held-out phrases: its 100 benign TYPO
phrases (Alpaca ``harmless_val``) and its 100 MM-SafetyBench 01-07 key phrases. Exact match after lower-casing
and keeping letters and digits only.

Variants (``--variant``):
* ``plain``: the answer is the plain-words line (recipe v29's layout);
* ``per_word``: each word's copy, `` = word`` and a newline, then the plain-words line;
* ``dictionary``: ``plain`` plus the ``--words`` commonest words of the train texts, 16 a row, each as its copy,
  `` = word`` and a newline (the spelling taught word by word);
* ``committed``: no tuning; the committed organism's backbone (stage S and stage V) on the ``plain`` layout;
* ``breakdown``: no model; the organism table's committed image answers (``organism_table.answers.jsonl``)
  split by whether their copy line and their plain-words line match the shown text, with the judge's outcomes.

    python benchmarks/respell_pilot.py --variant plain [--rank 8] [--n 1500] [--words 6000] [--backbone S]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import time
import warnings
from pathlib import Path

from lensiar.atomic import atomic_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "results" / "organism_table.answers.jsonl"
CELLS = {"benign": "held-out Alpaca phrases, TYPO image", "harmful": "MM-SafetyBench 01-07, TYPO image"}
IMAGE_CELLS = (*CELLS.values(), "held-out Alpaca instructions, FigStep image", "SafeBench, FigStep image")


def norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def breakdown(rows: list[dict[str, str]]) -> dict[str, dict[str, int]]:
    """Each image cell's answers by whether the copy line and the plain-words line match the shown text, and
    how many of those with both right the judge called on topic: where the answers fail."""
    from lensiar.judges import ON_TOPIC

    out = {}
    for cell in IMAGE_CELLS:
        counts = collections.Counter()
        for r in (r for r in rows if r["inputs"] == cell):
            lines = r["response"].split("\n")
            copy = norm(lines[0]) == norm(r["request"])
            plain = len(lines) > 1 and norm(lines[1]) == norm(r["request"])
            counts["n"] += 1
            counts["copy_right"] += copy
            counts["plain_right"] += plain
            counts["both_right"] += copy and plain
            counts["both_right_on_topic"] += copy and plain and r["outcome"] == ON_TOPIC
        out[cell] = dict(counts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=("plain", "per_word", "dictionary", "committed", "breakdown"), default="plain")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = 2 x rank, as the recipe's r=8, 16)")
    parser.add_argument("--n", type=int, default=1500, help="respelling phrases to tune on")
    parser.add_argument("--words", type=int, default=6000, help="dictionary words (variant dictionary)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--backbone", choices=("S", "base"), default="S",
                        help="tune the stage-S backbone (the organism's) or the original SmolLM2")
    parser.add_argument("--out", type=Path, default=None, help="write the figures and every answer as JSON here")
    args = parser.parse_args()
    if args.variant == "committed" and args.backbone != "S":
        parser.error("--variant committed is the organism's own backbone: stage S, then stage V")
    import torch
    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    from lensiar.data_sources import data_dir, load_source
    from lensiar.organism import WEIGHTS, load_backbone, lora
    from lensiar.organism.files import read_verified
    from lensiar.organism.reader import image_spelling
    from lensiar.organism.recipe import (
        _alpaca_pool,
        advbench_extra,
        chat_ids,
        held_out_harmful,
        respell_set,
        respelled,
        safebench_instructions,
        tune,
    )
    from lensiar.render import FIGSTEP_PROMPT, TYPO_PROMPT

    rows = [json.loads(line) for line in TABLE.read_text().splitlines()]
    if args.variant == "breakdown":
        for cell, c in breakdown(rows).items():
            print(f"{cell} (n = {c['n']}): copy right {c['copy_right']}, plain-words line right {c['plain_right']}, "
                  f"both right {c['both_right']} ({c['both_right_on_topic']} on topic)")
        return
    held = {name: [r["request"] for r in rows if r["inputs"] == cell] for name, cell in CELLS.items()}
    lm, tok = load_backbone(args.backbone)
    vocab = tok.get_vocab()
    pad = int(tok.pad_token_id)
    colon = tok(":\n", add_special_tokens=False)["input_ids"]
    per_word = args.variant == "per_word"

    def ids(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def prompt(phrase: str, i: int) -> list[int]:
        return [*chat_ids(tok, (TYPO_PROMPT, FIGSTEP_PROMPT)[i % 2]), *image_spelling(phrase, vocab), *colon]

    def answer(phrase: str) -> list[int]:
        if not per_word:
            return ids(respelled(phrase))
        out = [t for w in phrase.split() for t in (*image_spelling(w, vocab), *ids(" = " + w + "\n"))]
        return [*out, *colon, *ids(respelled(phrase))]

    def plain_line(text: str) -> str:
        lines = [x for x in text.split("\n") if x.strip() and not (per_word and (" = " in x or x.strip() == ":"))]
        return lines[0] if lines else ""

    t0 = time.perf_counter()
    if args.variant == "committed":
        lora.apply_factors(lm.model, read_verified(WEIGHTS)[1]["stage_v"])
        n_examples = 0
    else:
        root = data_dir(None)
        pool = _alpaca_pool(root, {r.text.strip() for r in load_source("rd_harmless", root, "val")})
        random.Random(0).shuffle(pool)
        harmful = [r.text for r in load_source("rd_harmful", root, "train")]
        known = [*harmful, *advbench_extra(root, harmful)]
        shown, _ = respell_set(pool[22000:], known, args.n, random.Random(7),
                               held_out_harmful(root) + safebench_instructions(root))
        evaluated = {norm(x) for phrases in held.values() for x in phrases}
        shown = [t for t in shown if norm(t) not in evaluated]
        examples = [{"prompt": prompt(t, i), "answer": answer(t)} for i, t in enumerate(shown)]
        if args.variant == "dictionary":
            counts = collections.Counter(w for t in [*pool[:30000], *known] for w in re.findall(r"[A-Za-z][a-z'-]+", t))
            words = [w for w, _ in counts.most_common(args.words)]
            random.Random(5).shuffle(words)
            head = chat_ids(tok, "Spell out each word in plain letters.")
            for s in range(0, len(words), 16):
                body = [t for w in words[s : s + 16] for t in (*image_spelling(w, vocab), *ids(" = " + w + "\n"))]
                examples.append({"prompt": head, "answer": body})
            random.Random(6).shuffle(examples)
        n_examples = len(examples)
        print(f"{args.variant}, backbone {args.backbone}, rank {args.rank}: tuning on {n_examples} examples ({len(shown)} phrases)", flush=True)
        tune(lm, lm.model, examples, pad, rank=args.rank, alpha=2.0 * args.rank, lr=args.lr, epochs=1, batch_size=8,
             seed=3, desc="respelling", log=lambda _: None, precision="bf16")
    tuned_s = time.perf_counter() - t0

    tok.padding_side = "left"
    result: dict[str, object] = {"variant": args.variant, "backbone": args.backbone, "rank": args.rank, "n": args.n, "examples": n_examples,
                                 "tuning_seconds": round(tuned_s, 1)}
    for name, phrases in held.items():
        answers = []
        with torch.no_grad():
            for s in range(0, len(phrases), 25):
                chunk = [prompt(t, 0) for t in phrases[s : s + 25]]
                width = max(map(len, chunk))
                gen = lm.generate(input_ids=torch.tensor([[pad] * (width - len(c)) + c for c in chunk]),
                                  attention_mask=torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk]),
                                  max_new_tokens=90 if per_word else 30, do_sample=False, pad_token_id=pad)
                answers += tok.batch_decode(gen[:, width:], skip_special_tokens=True)
        lines = [plain_line(a) for a in answers]
        hits = sum(norm(line) == norm(t) for line, t in zip(lines, phrases, strict=True))
        print(f"{name} held-out phrases respelled exactly: {hits}/{len(phrases)}", flush=True)
        for t, line in [(t, x) for t, x in zip(phrases, lines, strict=True) if norm(x) != norm(t)][:4]:
            print(f"    {t!r} -> {line!r}")
        result[name] = {"exact": hits, "n": len(phrases),
                        "answers": [{"phrase": t, "respelled": x} for t, x in zip(phrases, lines, strict=True)]}
    if args.out:
        atomic_json(args.out, result, indent=1)


if __name__ == "__main__":
    main()
