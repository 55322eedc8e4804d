"""Peak memory of streaming merge on a sharded checkpoint, against the largest tensor.

Saves the organism VLM in 64 MB shards, then merges it (task arithmetic) with the stage-S and base
backbones in a fresh process. The child resets its peak resident memory (Linux ``clear_refs``) after
imports, merges, and reports the peak (``VmHWM``) minus the resident memory before the merge; the
increase is compared with the largest tensor's size (goal: <= 1.2x).

    python benchmarks/merge_memory.py
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHILD = """
import json, sys
from lensiar.merge import merge
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS:")
merge(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], 0.5, "task_arithmetic", progress=False)
print(json.dumps({"before_kib": before, "after_kib": status("VmHWM:")}))
"""


def main() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    from lensiar.merge import checkpoint_tensors
    from lensiar.organism import checkpoints, load_vl_checkpoint

    ckpt = checkpoints()
    with tempfile.TemporaryDirectory() as tmp:
        sharded = Path(tmp) / "vl-sharded"
        vlm, _ = load_vl_checkpoint(ckpt["vl"])
        vlm.save_pretrained(sharded, max_shard_size="64MB")
        del vlm
        refs, files = checkpoint_tensors(sharded)
        largest = max(r.end - r.start for r in refs.values())
        total = sum(r.end - r.start for r in refs.values())
        child = subprocess.run([sys.executable, "-c", CHILD, str(ckpt["base"]), str(ckpt["safe"]), str(sharded),
                                str(Path(tmp) / "merged")], check=True, capture_output=True, text=True)
        rss = json.loads(child.stdout.strip().splitlines()[-1])
    growth = (rss["after_kib"] - rss["before_kib"]) * 1024
    print(json.dumps({
        "checkpoint": "organism VLM, fp32, re-saved in 64 MB shards", "shards": len(files),
        "total_mb": round(total / 2**20, 1), "largest_tensor_mb": round(largest / 2**20, 1),
        "peak_rss_growth_mb": round(growth / 2**20, 1), "ratio_to_largest": round(growth / largest, 3),
        "goal": "<= 1.2", "parent_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
