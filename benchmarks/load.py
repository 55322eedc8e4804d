"""Load time of SmolLM2-135M-Instruct from the registry once the cache exists (goal: under 3 s).

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
import time, warnings
warnings.filterwarnings("ignore")
import lensiar, transformers
transformers.logging.set_verbosity_error(); transformers.logging.disable_progress_bar()
start = time.perf_counter()
lensiar.Lens.from_pretrained("smollm2-135m-instruct")
print(time.perf_counter() - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-c", CHILD], check=True, capture_output=True)  # make sure the cache exists
    times = [float(subprocess.run([sys.executable, "-c", CHILD], check=True, capture_output=True, text=True)
                   .stdout.strip().splitlines()[-1]) for _ in range(args.repeats)]
    print(json.dumps({"model": "smollm2-135m-instruct", "cached_load_median_s": round(statistics.median(times), 3),
                      "runs_s": [round(t, 3) for t in times], "goal_s": 3.0}, indent=2))


if __name__ == "__main__":
    main()
