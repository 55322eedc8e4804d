"""Stage-V tuning step: one padded batch (recipes up to v29) against length-sorted micro-batches (recipe v30).

Batches shaped like recipe v30's stage V, from the committed organism (its processor and vocabulary) and
held-out-free Alpaca train texts: image batches of 8 drawn from reading rows (the image-token copy as the
answer), TYPO and FigStep rows (copy, respelling, then a 40-token answer) in the recipe's 768 / 768 / 564
proportions; text batches of 8 from respelling rows (the copy in the prompt, the plain-words line as the
answer) and replayed text rows in its 3001 / 384 proportions. Image and text batches alternate as the recipe's
``group_rows`` makes them. Each batch runs both ways from the same adapter state under bf16 autocast, in
interleaved order; prints the median seconds per step of each kind, the token positions computed, the time
ratio, and the cosine between the two gradients (the same sum, rounded differently).

    python benchmarks/split_batches.py [--steps 12] [--overhead 64]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12, help="batches of each kind (image, text)")
    parser.add_argument("--overhead", type=int, default=64, help="split_overhead: tokens of fixed cost per run")
    args = parser.parse_args()
    import torch
    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    from lensiar.data_sources import data_dir, load_source
    from lensiar.organism import load, lora
    from lensiar.organism.reader import image_spelling
    from lensiar.organism.recipe import (
        RECIPES,
        answer_ids,
        batch_backward,
        chat_ids,
        image_row,
        respelled,
        task_answer_ids,
    )
    from lensiar.prompts import READ_PROMPT, phrase_of
    from lensiar.render import FIGSTEP_PROMPT, TYPO_PROMPT, fits, render_phrase, render_steps

    v_cfg = RECIPES[30][1]
    vlm, proc = load()
    tok = proc.tokenizer
    vocab = tok.get_vocab()
    pad = int(tok.pad_token_id)
    texts = [r.text for r in load_source("rd_harmless", data_dir(None), "train")]
    rng = random.Random(0)
    phrases = [p for p in map(phrase_of, texts) if fits(p)]
    steps = [t for t in texts if fits(t, "steps")]
    colon = tok(":\n", add_special_tokens=False)["input_ids"]

    def answer() -> str:  # a 40-token stand-in for the teacher's answer
        return tok.decode(tok(" ".join(rng.sample(texts, 4)))["input_ids"][:40])

    def image_rows() -> list[dict]:
        kinds = rng.choices(("read", "typo", "steps"), weights=(768, 768, 564), k=8)
        rows = []
        for kind in kinds:
            if kind == "read":
                p = rng.choice(phrases)
                rows.append(image_row(tok, proc, render_phrase(p), READ_PROMPT,
                                      [*image_spelling(p, vocab, "ordered"), tok.convert_tokens_to_ids("<|im_end|>")]))
            elif kind == "typo":
                p = rng.choice(phrases)
                rows.append(image_row(tok, proc, render_phrase(p), TYPO_PROMPT, task_answer_ids(tok, vocab, v_cfg, p, answer())))
            else:
                t = rng.choice(steps)
                rows.append(image_row(tok, proc, render_steps(t), FIGSTEP_PROMPT, task_answer_ids(tok, vocab, v_cfg, t, answer())))
        return rows

    def text_rows() -> list[dict]:
        rows = []
        for kind in rng.choices(("respell", "replay"), weights=(3001, 384), k=8):
            if kind == "respell":
                p = rng.choice(phrases)
                rows.append({"prompt": [*chat_ids(tok, rng.choice((TYPO_PROMPT, FIGSTEP_PROMPT))),
                                        *image_spelling(p, vocab, "ordered"), *colon],
                             "answer": tok(respelled(p), add_special_tokens=False)["input_ids"]})
            else:
                rows.append({"prompt": chat_ids(tok, rng.choice(texts)), "answer": answer_ids(tok, answer())})
        return rows

    batches = [("image", image_rows()) if i % 2 == 0 else ("text", text_rows()) for i in range(2 * args.steps)]
    for p in [*vlm.model.vision_model.parameters(), *vlm.model.connector.parameters(), *vlm.parameters()]:
        p.requires_grad_(False)
    adapters = lora.attach(vlm.model.text_model, rank=8, alpha=16.0, seed=3)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.B.normal_(0.0, 1e-3)
    params = list(lora.trainable(adapters))
    vlm.train()

    def step(rows: list[dict], overhead: int | None) -> tuple[float, int, torch.Tensor]:
        vlm.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        _, computed = batch_backward(vlm, rows, pad, "bf16", overhead)
        seconds = time.perf_counter() - t0
        return seconds, computed, torch.cat([p.grad.flatten().double() for p in params])  # type: ignore[union-attr]

    step(batches[0][1], None)  # warm-up
    times: dict[tuple[str, str], list[float]] = {}
    tokens: dict[tuple[str, str], int] = {}
    cosines = []
    for i, (kind, rows) in enumerate(batches):
        order = (("padded", None), ("split", args.overhead)) if i % 4 < 2 else (("split", args.overhead), ("padded", None))
        grads = {}
        for name, overhead in order:
            seconds, computed, grads[name] = step(rows, overhead)
            times.setdefault((kind, name), []).append(seconds)
            tokens[(kind, name)] = tokens.get((kind, name), 0) + computed
        cosines.append(float(torch.nn.functional.cosine_similarity(grads["padded"], grads["split"], dim=0)))
    lora.remove(vlm.model.text_model)
    med = {f"{k} {n}": round(statistics.median(v), 3) for (k, n), v in times.items()}
    out = {"model": "organism (committed), stage-V LoRA r=8, bf16 autocast", "batch": 8, "steps_per_kind": args.steps,
           "split_overhead": args.overhead, "threads": torch.get_num_threads(), "seconds_per_step_median": med,
           "token_positions": {f"{k} {n}": v for (k, n), v in tokens.items()},
           "split_over_padded_time": {k: round(med[f"{k} split"] / med[f"{k} padded"], 3) for k in ("image", "text")},
           "split_over_padded_tokens": {k: round(tokens[(k, "split")] / tokens[(k, "padded")], 3)
                                        for k in ("image", "text")},
           "gradient_cosine_min": round(min(cosines), 6)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
