"""Peak memory of a response-averaged capture (the single_response / multi_response strategies): reduced as each
layer runs against keeping every layer's whole sequence and averaging afterwards.

SmolLM2-135M-Instruct (fp32, CPU), 8 teacher-forced prompts of about 750 tokens, hook_z and resid_post at all
30 layers. Each way runs in its own process; prints the peak resident memory above the loaded model (MB).

    python benchmarks/capture_memory.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import warnings


def measure(way: str) -> float:
    import torch

    import lensiar

    warnings.filterwarnings("ignore")
    lens = lensiar.Lens.from_pretrained("smollm2-135m-instruct")
    prompts = ["Tell me a long story about bread. " * 60] * 8
    batch, mask = lens.prepare_with_responses(prompts, ["Sure, here is a story about bread and its history. " * 20] * 8)
    names = ["blocks.*.attn.hook_z", "blocks.*.hook_resid_post"]
    weight = mask.float() / mask.float().sum(1, keepdim=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if way == "reduced":
        lens.run_with_cache(batch, names, positions=weight)
    else:
        cache = lens.run_with_cache(batch, names, positions=mask)
        torch.einsum("lbshd,bs->blhd", cache.stack("attn.hook_z"), weight)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--way":
        print(measure(sys.argv[2]))
        return
    result = {}
    for way in ("reduced", "full_sequence"):
        done = subprocess.run([sys.executable, __file__, "--way", way], capture_output=True, text=True, check=True)
        result[f"{way}_peak_mb"] = round(float(done.stdout.strip().splitlines()[-1]), 0)
    result["ratio"] = round(result["full_sequence_peak_mb"] / result["reduced_peak_mb"], 2)
    print(json.dumps({"model": "SmolLM2-135M-Instruct", "prompts": 8, "tokens": 752, **result}, indent=2))


if __name__ == "__main__":
    main()
