"""How stable the head ranking is under a change of split seed, by what it is ranked on, on SmolLM2-135M-Instruct.

For each strategy (``query``: 160 AdvBench vs 160 Alpaca prompts; ``multi_response``: 64 AdvBench prompts with 4
refusals and 4 templated compliant answers each), seeds 0, 1, 2: heads at held-out accuracy 1.0, and for each
pair of seeds the overlap of the top 16 heads and the rank correlation (Spearman) over all 270 heads, ranked by
(a) held-out accuracy (ties to lower indices, the old rule), (b) the held-out split's log-loss, (c) 4-fold
cross-validated log-loss (lensiar's ranking). Also the layers the top 16 span.

    python benchmarks/ranking_stability.py
"""

from __future__ import annotations

import itertools
import json
import warnings

import transformers
from scipy.stats import spearmanr

import lensiar
from lensiar.probes import top_heads

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
SEEDS = (0, 1, 2)


def main() -> None:
    lens = lensiar.Lens.from_pretrained("smollm2-135m-instruct")
    report = {}
    for strategy, n in (("query", 160), ("multi_response", 64)):
        acts = lensiar.sample_activations(lens, lensiar.build_samples(strategy, n=n, seed=0), progress=False)
        split = {s: lensiar.probe_heads(None, acts, seed=s, folds=None) for s in SEEDS}
        cv = {s: lensiar.probe_heads(None, acts, seed=s) for s in SEEDS}
        scores = {  # lower is better for every score here
            "accuracy (ties to lower index)": {s: (-split[s].accuracy, top_heads(split[s].accuracy, 16)) for s in SEEDS},
            "split log-loss": {s: (split[s].loss, split[s].top(16)) for s in SEEDS},
            "4-fold cross-validated log-loss": {s: (cv[s].loss, cv[s].top(16)) for s in SEEDS},
        }
        rows = {}
        for name, by_seed in scores.items():
            pairs = [(len(set(by_seed[a][1]) & set(by_seed[b][1])),
                      float(spearmanr(by_seed[a][0].flatten(), by_seed[b][0].flatten())[0]))
                     for a, b in itertools.combinations(SEEDS, 2)]
            rows[name] = {"top16_overlap": [p[0] for p in pairs], "spearman": [round(p[1], 3) for p in pairs],
                          "layers_in_top16_seed0": sorted({layer for layer, _ in by_seed[0][1]})}
        report[strategy] = {"n_samples": len(acts), "heads_at_accuracy_1": [int((split[s].accuracy == 1).sum())
                                                                           for s in SEEDS], "rankings": rows}
        print(f"{strategy}: {len(acts)} samples, heads at held-out accuracy 1.0 per seed: "
              f"{report[strategy]['heads_at_accuracy_1']} of {split[0].accuracy.numel()}")
        for name, row in rows.items():
            print(f"  {name:34s} top-16 overlap (seed pairs 0-1, 0-2, 1-2) {row['top16_overlap']}, "
                  f"Spearman {row['spearman']}, top-16 layers (seed 0) {row['layers_in_top16_seed0']}")
    print(json.dumps({"model": "SmolLM2-135M-Instruct", "seeds": SEEDS, **report}))


if __name__ == "__main__":
    main()
