"""Probes fitted on bf16 activations against fp32 ones, per head, on SmolLM2-135M-Instruct.

Query strategy, ``--n`` prompts per class (default 1000, which the data caps at 1,040 samples, 260 held out, so
one held-out prompt is 0.38 accuracy points; ``--n 200``: 400 samples, one prompt one point), seed 0, held-out accuracy of every head's probe under each dtype. Heads whose spread over
prompts is below bf16's resolution (max per-dimension std / max |z| < 2^-7) are reported apart: in bf16 they
are constant and their probes predict the prior.

    python benchmarks/bf16_probes.py [--n 1000]
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch
import transformers

import lensiar

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    samples = lensiar.build_samples("query", n=args.n, seed=0)
    fp = lensiar.Lens.from_pretrained("smollm2-135m-instruct")
    bf = lensiar.Lens.from_pretrained("smollm2-135m-instruct", dtype=torch.bfloat16)
    acts_fp = lensiar.sample_activations(fp, samples, progress=True)
    acts_bf = lensiar.sample_activations(bf, samples, progress=True)
    acc_fp = lensiar.probe_heads(None, acts_fp, progress=False)
    acc_bf = lensiar.probe_heads(None, acts_bf, progress=False)
    diff = (acc_fp.accuracy - acc_bf.accuracy).abs() * 100  # points
    spread = acts_fp.z.std(0).amax(-1) / acts_fp.z.abs().amax(0).amax(-1)
    ok = spread >= 2**-7
    held_out = len(acc_fp.val_ids)
    result = {
        "model": "SmolLM2-135M-Instruct", "strategy": "query", "samples": len(samples), "held_out": held_out,
        "seed": 0, "heads": int(diff.numel()), "unresolvable_heads": [[int(a), int(b)] for a, b in (~ok).nonzero()],
        "resolvable": {"mean_points": round(diff[ok].mean().item(), 3), "max_points": round(diff[ok].max().item(), 2),
                       "within_1_point": int((diff[ok] <= 1.0 + 1e-6).sum()), "of": int(ok.sum())},
        "unresolvable_points": [round(v, 1) for v in diff[~ok].tolist()],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
