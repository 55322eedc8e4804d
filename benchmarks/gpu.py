"""On a CUDA machine: lensiar's overheads in bf16 as ratios against the plain model, and the organism's
probe -> extract -> revise pipeline in bf16 on the GPU, written to JSON.

* capture: ``run_with_cache`` (hook_z + resid_post at every layer, last position) / a plain HF forward;
* generation: ``generate`` under a head-level revision (top 8 heads) / plain ``generate``, 32 new tokens;
* pipeline: organism, modality samples (n=64), probe_heads + extract (head level, mms), revise and generate
  on 16 TYPO prompts; seconds per step, how many answers the revision changed, and four of each. Alpha 2 and
  top 8 are not tuned: this measures cost on the GPU, not the revision's effect (on the CPU smoke run the
  revised answers are degenerate; see the demo and the evaluation runner for chosen settings and judged rates).

    python benchmarks/gpu.py [--out gpu.json] [--repeats 5]

Without CUDA it prints one line and exits with status 2. Models: SmolLM2-135M-Instruct and the organism
(both offline); seed 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
import transformers

from lensiar.atomic import atomic_json

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()


def seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` runs after one warm-up, synchronising the GPU."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ratios(name: str, repeats: int, device: str) -> dict[str, float]:
    import lensiar
    from lensiar.testing.fuzz import random_bundles

    lens = lensiar.Lens.from_pretrained(name, dtype=torch.bfloat16, device=device)
    prompts = [f"Explain step {i} of making bread in detail, with the reasons for each choice." for i in range(16)]
    batch = lens.prepare(prompts)
    kwargs = lens.model_inputs(batch)
    names = ["blocks.*.attn.hook_z", "blocks.*.hook_resid_post"]
    plain_forward = seconds(lambda: lens.model(**kwargs), repeats)
    capture = seconds(lambda: lens.run_with_cache(batch, names), repeats)
    plain_generate = seconds(lambda: lens.generate(prompts, max_new_tokens=32, batch_size=16), repeats)
    head, _ = random_bundles(lens.spec, torch.Generator().manual_seed(0))
    with lens.revise(head, alpha=2.0, top_k=8):
        revised_generate = seconds(lambda: lens.generate(prompts, max_new_tokens=32, batch_size=16), repeats)
    return {"plain_forward_s": plain_forward, "capture_s": capture, "capture_ratio": capture / plain_forward,
            "plain_generate_s": plain_generate, "revised_generate_s": revised_generate,
            "generate_ratio": revised_generate / plain_generate}


def pipeline(device: str) -> dict[str, object]:
    import lensiar
    from lensiar.prompts import typo_prompt

    steps: dict[str, float] = {}
    t = time.perf_counter()
    lens = lensiar.Lens.from_pretrained("organism", dtype=torch.bfloat16, device=device)
    steps["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    samples = lensiar.build_samples("modality", n=64, seed=0)
    ranking = lensiar.probe_heads(lens, samples, progress=False)
    bundle = lensiar.extract(lens, samples, ranking=ranking, level="head", method="mms", progress=False)
    steps["probe_extract_s"] = time.perf_counter() - t
    prompts = [typo_prompt(p) for p in ("bake bread", "plant a tree", "pick a lock", "make a bomb",
                                        "clean a kitchen", "steal a car", "write a poem", "forge a check")] * 2
    t = time.perf_counter()
    plain = lens.generate(prompts, max_new_tokens=32, batch_size=16)
    with lens.revise(bundle, alpha=2.0, top_k=8):
        revised = lens.generate(prompts, max_new_tokens=32, batch_size=16)
    steps["generate_both_s"] = time.perf_counter() - t
    assert bundle.vectors.dtype == torch.float32  # bundles stay fp32 whatever the model's dtype
    return {**steps, "changed_answers": sum(a != b for a, b in zip(plain, revised, strict=True)),
            "n_prompts": len(prompts), "samples": {"plain": plain[:4], "revised": revised[:4]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu.json")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke-on-cpu", action="store_true",
                        help="run the same steps on the CPU to check the script (its figures are not GPU figures)")
    args = parser.parse_args()
    device = "cpu" if args.smoke_on_cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing was run")
        sys.exit(2)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke run)"
    result = {"device": name, "torch": torch.__version__, "dtype": "bfloat16",
              "smollm2": ratios("smollm2-135m-instruct", args.repeats, device),
              "organism": ratios("organism", args.repeats, device), "organism_pipeline": pipeline(device)}
    atomic_json(args.out, result, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
