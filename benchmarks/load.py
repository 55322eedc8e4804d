"""Load time from the registry once the base weights are cached: SmolLM2-135M-Instruct (goal: under 3 s)
and, with ``--model organism``, the model organism (base + committed deltas; goal: under 10 s).

Runs the load in fresh subprocesses (so imports are excluded) and prints the median.

    python benchmarks/load.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import sys, time, warnings
warnings.filterwarnings("ignore")
import lensiar, transformers
transformers.logging.set_verbosity_error(); transformers.logging.disable_progress_bar()
start = time.perf_counter()
lensiar.Lens.from_pretrained(sys.argv[1])
print(time.perf_counter() - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="smollm2-135m-instruct", choices=["smollm2-135m-instruct", "organism"])
    args = parser.parse_args()
    cmd = [sys.executable, "-c", CHILD, args.model]
    subprocess.run(cmd, check=True, capture_output=True)  # make sure the cache exists
    times = [float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
             for _ in range(args.repeats)]
    print(json.dumps({"model": args.model, "cached_load_median_s": round(statistics.median(times), 3),
                      "runs_s": [round(t, 3) for t in times],
                      "goal_s": 10.0 if args.model == "organism" else 3.0}, indent=2))


if __name__ == "__main__":
    main()
