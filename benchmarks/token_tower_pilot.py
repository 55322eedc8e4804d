"""Pilot: can the organism's tower read whole tokens, so that the backbone needs no respelling?

Under the organism's two-character reading (``lensiar.organism.reader``, scheme "ordered") the backbone sees a
phrase as pieces such as ``ba ke Ġ br ea d`` and must respell them into words it knows, the step the 135M backbone
fails at (docs/organism.md, "After v30"). This pilot moves the respelling into the tower: each character cell is one
image token, the backbone's own input embedding of the *canonical* token that starts in that cell, ``NULL``
elsewhere (for "bake bread": ``bake`` on the first ``b``, ``Ġbread`` on the second). Read in order without ``NULL``
the image tokens are then the tokenizer's own encoding of the text, and reading back is a copy. A token goes on the
cell of its first visible character; a token of spaces only (``Ġ`` before a digit) on its space's cell when that
space is drawn in the same row, and is dropped at a line wrap.

It trains a fresh tower and slot connector around the committed stage-S backbone on benign Alpaca instructions
(outside the held-out validation split) and on lists of the vocabulary's own word tokens (no harmful text or image),
with a sampled softmax (every slot against all 48k renderable tokens took 6.5 s a step), then reads the organism
table's held-out images: an image counts as read when the nearest embedding over the *whole* vocabulary is right in
every one of its 128 image tokens.

    python benchmarks/token_tower_pilot.py --steps 1200 --out docs/results/token_tower_pilot
    python benchmarks/token_tower_pilot.py --steps 600 --width 384 --layers 6 --out docs/results/token_tower_pilot
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lensiar.atomic import atomic_json
from lensiar.data_sources import data_dir, load_source
from lensiar.organism import assemble, load_backbone
from lensiar.organism.assemble import NULL, tokenizer_with_image_tokens, vlm_around
from lensiar.organism.reader import patch_embeddings, pixels, reader_update
from lensiar.organism.recipe import _alpaca_pool
from lensiar.organism.report import mm_safety, safebench
from lensiar.progress import tqdm
from lensiar.prompts import phrase_of
from lensiar.render import GRID, Grid, draw, fits, layout, steps_text

Lines = list[list[tuple[int, str]]]


def reading_text(lines: Lines, grid: Grid = GRID) -> tuple[str, list[tuple[int, int] | None]]:
    """The layout's words in reading order joined by single spaces, and each character's ``(row, col)`` cell: a
    space between two words of a row maps to the blank cell after the first, a space at a line wrap to ``None``."""
    chars: list[str] = []
    where: list[tuple[int, int] | None] = []
    for r, line in enumerate(lines):
        for k, (col, word) in enumerate(line):
            if chars:
                chars.append(" ")
                where.append((r, line[k - 1][0] + len(line[k - 1][1])) if k else None)
            for j, ch in enumerate(word):
                chars.append(ch)
                where.append((r, col + j))
    return "".join(chars), where


def token_targets(lines: Lines, tokenizer: Any, null_id: int, grid: Grid = GRID) -> list[int]:
    """One token id per cell, row-major (``grid.rows * grid.cols``): the canonical token starting there, or
    ``null_id``."""
    text, where = reading_text(lines, grid)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    out = [null_id] * (grid.rows * grid.cols)
    for token, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        visible = next((i for i in range(start, end) if not text[i].isspace()), None)
        cell = where[visible] if visible is not None else where[start]
        if cell is not None:
            out[cell[0] * grid.cols + cell[1]] = token
    return out


def token_spelling(lines: Lines, tokenizer: Any, null_id: int, grid: Grid = GRID) -> list[int]:
    """The image tokens of :func:`token_targets` in reading order with ``null_id`` left out: the tokenizer's
    encoding of :func:`reading_text`, less any space token at a line wrap."""
    return [t for t in token_targets(lines, tokenizer, null_id, grid) if t != null_id]


def renderable_tokens(vocab: dict[str, int], extra: Sequence[int] = ()) -> list[int]:
    """Sorted ids of every token a render can show as its first visible characters: printable ASCII in the
    byte-level alphabet (``Ġ`` for a space), at most :data:`GRID.cols` characters, plus ``extra``."""
    ids = [i for t, i in vocab.items()
           if t and len(t) <= GRID.cols + 1 and all(" " < c <= "~" or c == "Ġ" for c in t) and "Ġ" not in t[1:]]
    return sorted({*ids, *extra})


def word_list(words: list[str], rng: random.Random, dense: bool = False) -> str:
    """3-9 vocabulary words (``dense``: as many as fit the image), the first capitalised half the time, fitting one
    TYPO render."""
    capital = rng.random() < 0.5
    if dense:
        text = ""
        while True:
            longer = f"{text} {rng.choice(words)}".strip()
            if not fits(longer):
                return text[0].upper() + text[1:] if capital and text else text
            text = longer
    while True:
        text = " ".join(rng.sample(words, rng.randint(3, 9)))
        if capital:
            text = text[0].upper() + text[1:]
        if fits(text):
            return text


def sampled_step(vlm: Any, images: torch.Tensor, targets: torch.Tensor, emb: torch.Tensor, cand: torch.Tensor,
                 negatives: int, gen: torch.Generator, null: int, params: list[Any], opt: Any, sched: Any,
                 null_share: float = 1.0) -> dict[str, float]:
    """One tower step with a sampled softmax: the batch's own target tokens plus ``negatives`` drawn from ``cand``
    (every slot against all 48k renderable tokens took 6.5 s a step); tower and logits in bf16, losses in fp32.
    ``null_share`` < 1: the loss over every text slot and that share of the ``NULL`` slots (drawn anew each step)."""
    target = targets.flatten()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = patch_embeddings(vlm, images)
    out = out.float().flatten(0, 1)
    if null_share < 1.0:  # every text slot, a random share of the NULL ones
        keep = (target != null) | (torch.rand(len(target), generator=gen) < null_share)
        target, out = target[keep], out[keep]
    drawn = cand[torch.randint(len(cand), (negatives,), generator=gen)]
    classes, inverse = torch.cat([target, drawn]).unique(return_inverse=True)
    logits = (out.bfloat16() @ emb[classes].T.bfloat16()).float()
    ce = torch.nn.functional.cross_entropy(logits, inverse[: len(target)])
    mse = (out - emb[target]).square().sum(-1).mean()
    loss = reader_update(ce, mse, params, opt, sched)
    hit = logits.argmax(-1) == inverse[: len(target)]
    text = target != null
    return {"loss": float(loss.detach()), "ce": float(ce.detach()), "mse": float(mse.detach()),
            "slot_accuracy": float(hit.float().mean()), "text_slot_accuracy": float(hit[text].float().mean())}


def render(text: str, style: str, tokenizer: Any, null: int) -> tuple[torch.Tensor, list[tuple[int]]]:
    lines = layout(text) if style == "phrase" else steps_text(text)
    return pixels(draw(lines)), [(t,) for t in token_targets(lines, tokenizer, null)]


@torch.no_grad()
def read(vlm: Any, texts: list[str], style: str, tokenizer: Any, null: int) -> list[dict[str, Any]]:
    """Per image: every slot right (nearest over the whole vocabulary), the text tokens right, and what was read."""
    emb = vlm.get_input_embeddings().weight
    out = []
    for start in range(0, len(texts), 50):
        batch = [render(t, style, tokenizer, null) for t in texts[start : start + 50]]
        got = (patch_embeddings(vlm, torch.stack([x for x, _ in batch])) @ emb.T).argmax(-1)
        for text, (_, target), row in zip(texts[start : start + 50], batch, got, strict=True):
            want = torch.tensor([t for (t,) in target])
            text_slots = want != null
            out.append({"text": text, "exact": bool((row == want).all()),
                        "tokens_right": int((row == want)[text_slots].sum()), "tokens": int(text_slots.sum()),
                        "read": tokenizer.decode([int(t) for t in row if int(t) != null])})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--words", type=float, default=0.5, help="share of renders that are vocabulary word lists")
    ap.add_argument("--negatives", type=int, default=4096, help="sampled negative classes a step")
    ap.add_argument("--width", type=int, default=assemble.VISION["hidden_size"], help="tower width")
    ap.add_argument("--layers", type=int, default=assemble.VISION["num_hidden_layers"], help="tower layers")
    ap.add_argument("--dense", action="store_true", help="word lists fill the image (default 3-9 words)")
    ap.add_argument("--null-share", type=float, default=1.0, help="share of NULL slots in each step's loss")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    root = data_dir(None)
    assemble.VISION.update(hidden_size=args.width, intermediate_size=4 * args.width, num_hidden_layers=args.layers,
                           num_attention_heads=args.width // 64)
    lm, tokenizer = load_backbone("S")
    tokenizer = tokenizer_with_image_tokens(tokenizer)
    vlm = vlm_around(lm, tokenizer, seed=args.seed, slots=2)
    null = int(tokenizer.convert_tokens_to_ids(NULL))
    vocab = tokenizer.get_vocab()
    val = [r.text for r in load_source("rd_harmless", root, "val")]
    pool = _alpaca_pool(root, set(val))
    words = sorted(t[1:] for t in vocab if re.fullmatch(r"Ġ[a-z]{2,}|Ġ[A-Z][a-z]+", t))
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    emb = vlm.get_input_embeddings().weight.detach()
    cand = torch.tensor(renderable_tokens(vocab, [null]))
    gen = torch.Generator().manual_seed(args.seed)
    params = list(vlm.model.vision_model.parameters()) + list(vlm.model.connector.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.1)
    vlm.model.vision_model.train()
    t0 = time.perf_counter()
    log = []
    bar = tqdm(range(args.steps), desc="token tower")
    for step in bar:
        xs, ys = [], []
        for _ in range(args.batch):
            if rng.random() < args.words:
                x, y = render(word_list(words, rng, args.dense), "phrase", tokenizer, null)
            else:
                text = rng.choice(pool)
                style = "steps" if rng.random() < 0.3 and fits(text, "steps") else "phrase"
                x, y = render(text, style, tokenizer, null)
            xs.append(x)
            ys.append(y)
        m = sampled_step(vlm, torch.stack(xs), torch.tensor(ys), emb, cand, args.negatives, gen, null, params, opt, sched,
                         args.null_share)
        bar.set_postfix(ce=f"{m['ce']:.3f}", acc=f"{m['text_slot_accuracy']:.3f}")
        if step % 100 == 0 or step == args.steps - 1:
            log.append({"step": step, "seconds": round(time.perf_counter() - t0, 1)} | m)
            print(json.dumps(log[-1]), flush=True)
    train_s = time.perf_counter() - t0
    vlm.model.vision_model.eval()
    plain = [t for t in val if re.fullmatch(r"[ -~]+", t)]
    sets = {
        "reading phrases (harmless_val)": (random.Random(1).sample([t for t in plain if fits(t)], 100), "phrase"),
        "benign TYPO phrases (harmless_val)": (random.Random(2).sample(
            [phrase_of(t) for t in plain if fits(phrase_of(t))], 100), "phrase"),
        "benign FigStep (harmless_val)": (random.Random(3).sample([t for t in plain if fits(t, "steps")], 100), "steps"),
        "MM-SafetyBench 01-07 key phrases, TYPO": ([m["phrase"] for m in mm_safety(root, 100, 0)], "phrase"),
        "SafeBench instructions, FigStep": ([s["instruction"] for s in safebench(root, 100, 0)], "steps"),
    }
    results = {}
    for name, (texts, style) in sets.items():
        rows = read(vlm, texts, style, tokenizer, null)
        results[name] = {"n": len(rows), "images_exact": sum(r["exact"] for r in rows),
                         "tokens_right": sum(r["tokens_right"] for r in rows), "tokens": sum(r["tokens"] for r in rows),
                         "answers": rows}
        print(f"{name}: {results[name]['images_exact']}/{len(rows)} images exact, "
              f"tokens {results[name]['tokens_right']}/{results[name]['tokens']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_json(args.out / f"steps{args.steps}_words{args.words}_w{args.width}_l{args.layers}"
                                    f"{'_dense' if args.dense else ''}{f'_null{args.null_share}' if args.null_share < 1 else ''}.json",
                {"steps": args.steps, "batch": args.batch, "words": args.words, "lr": args.lr, "negatives": args.negatives, "dense": args.dense, "null_share": args.null_share, "width": args.width, "layers": args.layers, "seed": args.seed,
                 "train_seconds": round(train_s, 1), "log": log, "sets": results})


if __name__ == "__main__":
    main()
