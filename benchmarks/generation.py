"""Generation speed under revision: hooked revision and the baked model against plain HF generate.

SmolLM2-135M-Instruct (fp32, CPU, default sdpa attention), batch 8 prompts, 64 new tokens, greedy,
min_new_tokens = max_new_tokens so every run makes the same number of tokens. The revision is a
head-level bundle (top 16 heads) plus a layer-level one (2 layers), random unit vectors (seed 0):
speed does not depend on what the vectors are. Runs are interleaved; medians of --repeats.
Prints tokens/s and ratios to plain; goal hooked >= 0.9x, baked >= 0.99x, baked tokens == hooked tokens.

    python benchmarks/generation.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch
import transformers

import lensiar
from lensiar import Lens, RevisionBundle

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()


def random_bundle(lens: Lens, level: str, top_k: int) -> RevisionBundle:
    s = lens.spec
    g = torch.Generator().manual_seed(0)
    shape = (s.n_layers, s.n_heads, s.d_head) if level == "head" else (s.n_layers, s.d_model)
    v = torch.randn(*shape, generator=g)
    return RevisionBundle(vectors=v / v.norm(dim=-1, keepdim=True), sigma=torch.rand(*shape[:-1], generator=g) + 0.5,
                          accuracy=torch.rand(*shape[:-1], generator=g), level=level, model=s.to_dict(),
                          defaults={"alpha": 1.0, "top_k": top_k})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    lens = Lens.from_pretrained("smollm2-135m-instruct")
    bundles = [random_bundle(lens, "head", 16), random_bundle(lens, "layer", 2)]
    baked = Lens(lens.bake(bundles), lens.processor)
    topics = ["rivers", "chess", "bread", "volcanoes", "jazz", "bees", "glass", "tides"]
    prompts = [f"Write a short paragraph about {t}." for t in topics[: args.batch]]
    options = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "batch_size": args.batch}

    def plain() -> list[str]:
        return lens.generate(prompts, **options)

    def hooked() -> list[str]:
        with lens.revise(bundles):
            return lens.generate(prompts, **options)

    def baked_run() -> list[str]:
        return baked.generate(prompts, **options)

    runs = {"plain": plain, "hooked": hooked, "baked": baked_run}
    times: dict[str, list[float]] = {k: [] for k in runs}
    outputs: dict[str, list[str]] = {}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
    tokens = args.batch * args.new_tokens
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "model": "SmolLM2-135M-Instruct fp32 CPU (sdpa)", "batch": args.batch, "new_tokens": args.new_tokens,
        "threads": torch.get_num_threads(), "repeats": args.repeats, "lensiar": lensiar.__version__,
        "tokens_per_s": {k: round(v, 1) for k, v in rate.items()},
        "hooked_vs_plain": round(rate["hooked"] / rate["plain"], 3),
        "baked_vs_plain": round(rate["baked"] / rate["plain"], 3),
        "baked_tokens_equal_hooked": outputs["baked"] == outputs["hooked"],
        "baked_rows_equal_hooked": sum(a == b for a, b in zip(outputs["baked"], outputs["hooked"], strict=True)),
    }, indent=2))


if __name__ == "__main__":
    main()
