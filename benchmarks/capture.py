"""Capture cost: lensiar's run_with_cache against a plain HF forward and TransformerLens's run_with_cache.

SmolLM2-135M-Instruct (fp32, CPU), batch 16 prompts of ~64 tokens, hook_z and resid_post at all 30
layers, last position. Prints medians and ratios of one run; goal: lensiar <= 1.25x plain forward and
faster than TransformerLens.

    python benchmarks/capture.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import transformers

import lensiar
from lensiar.models import smollm2_path

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)

    lens = lensiar.Lens.from_pretrained("smollm2-135m-instruct")
    lens.model.set_attn_implementation("eager")  # same kernels as the TransformerLens bridge
    base = "Explain, step by step and with care, how a small town could plan a new public library"
    prompts = [base + " for its citizens" * (i % 4) + "." for i in range(args.batch)]
    batch = lens.prepare(prompts)
    kwargs = lens.model_inputs(batch)
    names = ["blocks.*.attn.hook_z", "blocks.*.hook_resid_post"]

    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(smollm2_path()), device="cpu", dtype=torch.float32)
    tl_filter = lambda n: n.endswith(("attn.hook_z", "hook_resid_post"))  # noqa: E731

    with torch.no_grad():
        plain = median_seconds(lambda: lens.model(**kwargs), args.repeats)
        ours = median_seconds(lambda: lens.run_with_cache(batch, names, positions="last"), args.repeats)
        tl = median_seconds(lambda: bridge.run_with_cache(batch["input_ids"], attention_mask=batch["attention_mask"],
                                                          names_filter=tl_filter), args.repeats)
    result = {
        "model": "smollm2-135m-instruct fp32 cpu", "batch": args.batch, "tokens": int(batch["input_ids"].shape[1]),
        "names": "hook_z + resid_post x 30 layers, last position", "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "median_s": {"plain_forward": round(plain, 4), "lensiar": round(ours, 4), "transformerlens": round(tl, 4)},
        "ratio_lensiar_vs_plain": round(ours / plain, 3),
        "ratio_lensiar_vs_transformerlens": round(ours / tl, 3),
        "goal": "lensiar <= 1.25x plain and < 1.0x transformerlens",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
