"""Organism tuning speed: lensiar's training step against the plain HF step on the same batches.

Stage S's step shape: SmolLM2-135M-Instruct (fp32, CPU) with rank-8 LoRA on every projection, batches of 16
chat-formatted refusal_direction prompts (train split: harmful and Alpaca, alternating) each answered by the
first 40 tokens of another prompt's text, so prompt and answer lengths are those of the recipe. Two steps:

* plain: ``model(**batch).loss`` with the whole model unfrozen (what transformers' training loop does);
* lensiar (``recipe.tune``): every parameter but the adapters frozen, and :func:`recipe.answer_loss`, which
  applies the LM head at the answer positions only;
* lensiar bf16 (``precision="bf16"``, recipe v23 on): the same step under CPU bf16 autocast (adapters,
  gradients and optimiser state stay fp32).

Both see the same batches from the same adapter state, runs are interleaved, medians of --repeats steps.
Prints seconds per step, the ratios, whether the fp32 adapters' gradients agree exactly, and how far the bf16
step's gradients are from them (relative norm of the difference, and cosine, over all adapter gradients).

    python benchmarks/tuning_speed.py [--repeats 6]
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
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    import torch
    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    from lensiar.data_sources import data_dir, load_source
    from lensiar.organism import _base, lora
    from lensiar.organism.recipe import _collate, answer_ids, answer_loss, chat_ids

    root = data_dir(None)
    harmful = [r.text for r in load_source("rd_harmful", root, "train")]
    harmless = [r.text for r in load_source("rd_harmless", root, "train")]
    prompts = [p for pair in zip(harmful, harmless, strict=False) for p in pair]
    lm, tok = _base()
    rng = random.Random(0)
    batches = []
    for r in range(args.repeats):
        rows = prompts[r * args.batch : (r + 1) * args.batch]
        answers = [" ".join(rng.choice(prompts) for _ in range(4)) for _ in rows]
        examples = [{"prompt": chat_ids(tok, p), "answer": answer_ids(tok, tok.decode(tok(a)["input_ids"][:40]))}
                    for p, a in zip(rows, answers, strict=True)]
        batches.append(_collate(examples, tok.pad_token_id or 0))
    adapters = lora.attach(lm.model, rank=8, alpha=16.0, seed=1)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.B.normal_(0.0, 1e-3)
    params = list(lora.trainable(adapters))
    others = [p for p in lm.parameters() if p.requires_grad and all(p is not q for q in params)]
    lm.train()

    def plain(batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        for p in others:
            p.requires_grad_(True)
        lm.zero_grad(set_to_none=True)
        lm(**batch).loss.backward()
        return [p.grad.clone() for p in params]  # type: ignore[union-attr]

    def lensiar_step(batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        for p in others:
            p.requires_grad_(False)
        lm.zero_grad(set_to_none=True)
        answer_loss(lm, batch).backward()
        return [p.grad.clone() for p in params]  # type: ignore[union-attr]

    def lensiar_bf16(batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return lensiar_step(batch)

    times: dict[str, list[float]] = {"plain": [], "lensiar": [], "lensiar_bf16": []}
    same = True
    errors, cosines = [], []
    lensiar_step(batches[0])  # warm-up
    for batch in batches:
        grads = {}
        for name, step in (("plain", plain), ("lensiar", lensiar_step), ("lensiar_bf16", lensiar_bf16)):
            t0 = time.perf_counter()
            grads[name] = step(batch)
            times[name].append(time.perf_counter() - t0)
        same &= all(torch.equal(a, b) for a, b in zip(grads["plain"], grads["lensiar"], strict=True))
        exact, half = (torch.cat([g.flatten().double() for g in grads[k]]) for k in ("lensiar", "lensiar_bf16"))
        errors.append(float((half - exact).norm() / exact.norm()))
        cosines.append(float(torch.nn.functional.cosine_similarity(half, exact, dim=0)))
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"model": "SmolLM2-135M-Instruct", "lora_rank": 8, "batch": args.batch, "steps": args.repeats,
           "threads": torch.get_num_threads(), "seconds_per_step": med,
           "lensiar_over_plain_time": med["lensiar"] / med["plain"], "adapter_gradients_identical": same,
           "bf16_over_fp32_lensiar_time": med["lensiar_bf16"] / med["lensiar"],
           "bf16_gradient_relative_error_median": statistics.median(errors),
           "bf16_gradient_cosine_median": statistics.median(cosines)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
