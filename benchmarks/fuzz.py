"""The long fuzz run (issue: reliability): mutated bundles and a tampered store index, counts by outcome.

    python benchmarks/fuzz.py --cases 10000

Goal: 0 crashes (exceptions other than BundleError), 0 corrupted bundles loaded, 0 store escapes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    from lensiar.testing.fuzz import bundle_fuzz, store_fuzz

    t0 = time.perf_counter()
    bundles = bundle_fuzz(args.cases, args.seed)
    store = store_fuzz(max(1, args.cases // 10), args.seed)
    result = {"bundle_mutations": args.cases, "bundle_outcomes": dict(sorted(bundles.items())),
              "store_tamperings": max(1, args.cases // 10), "store_outcomes": dict(sorted(store.items())),
              "seed": args.seed, "model": "tiny random LLaVA (lensiar.testing.tiny_model)",
              "seconds": round(time.perf_counter() - t0, 1)}
    json.dump(result, sys.stdout, indent=2)
    print()
    ok = bundles["crash"] == 0 and bundles["loaded_corrupted"] == 0 and store["crash"] == 0 and store["escaped"] == 0
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
