"""The long fuzz run (issue: reliability): counts by outcome for mutated bundles, a tampered store index, bad
CLI arguments and revise cycles that raise.

    python benchmarks/fuzz.py --cases 10000

``--cases`` bundle mutations, a tenth as many store tamperings, a twentieth as many CLI invocations, 1000 revise
cycles on each of a tiny Llama and a tiny LLaVA and ``--smollm2-cycles`` (150) on SmolLM2-135M-Instruct.
Goal: 0 crashes (exceptions other than BundleError), 0 corrupted bundles loaded, 0 store escapes, every bad CLI
invocation refused in one line with nothing written, 0 hooks left and 0 weights changed by revising.
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
    parser.add_argument("--cycles", type=int, default=1000, help="revise cycles per tiny model")
    parser.add_argument("--smollm2-cycles", type=int, default=150)
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    from lensiar.lens import Lens
    from lensiar.testing import tiny_model
    from lensiar.testing.fuzz import bundle_fuzz, cli_fuzz, revise_fuzz, store_fuzz

    t0 = time.perf_counter()
    bundles = bundle_fuzz(args.cases, args.seed)
    store = store_fuzz(max(1, args.cases // 10), args.seed)
    failures: list[tuple[str, list[str], str]] = []
    cli = cli_fuzz(max(1, args.cases // 20), args.seed, failures)
    revise = {name: revise_fuzz(Lens(*tiny_model(name)), args.cycles, args.seed) for name in ("llama", "llava")}
    if args.smollm2_cycles:
        revise["smollm2-135m-instruct"] = revise_fuzz(Lens.from_pretrained("smollm2-135m-instruct"),
                                                      args.smollm2_cycles, args.seed)
    result = {"bundle_mutations": args.cases, "bundle_outcomes": dict(sorted(bundles.items())),
              "store_tamperings": max(1, args.cases // 10), "store_outcomes": dict(sorted(store.items())),
              "cli_invocations": max(1, args.cases // 20), "cli_outcomes": dict(sorted(cli.items())),
              "cli_failures": failures[:20],
              "revise_cycles": {name: dict(sorted(c.items())) for name, c in revise.items()},
              "seed": args.seed, "model": "tiny random LLaVA / Llama (lensiar.testing.tiny_model); SmolLM2 for revise",
              "seconds": round(time.perf_counter() - t0, 1)}
    json.dump(result, sys.stdout, indent=2)
    print()
    ok = (bundles["crash"] == 0 and bundles["loaded_corrupted"] == 0 and store["crash"] == 0 and store["escaped"] == 0
          and not failures and all(c["crash"] == 0 and c["leftover_hooks"] == 0 and c["weights_changed"] == 0
                                   for c in revise.values()))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
