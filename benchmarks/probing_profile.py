"""Where all-head probing spends its time: a torch.profiler breakdown of ``fit_logistic`` on the synthetic
benchmark's data, and how fast its matrix products run against this machine's best for the same shapes.

Data: benchmarks/probing.py's synthetic heads (default 1024 heads x 2000 samples x d_head 128, 80% train,
seed 0). Prints, per op kind, the share of the fit's CPU time; the batched products' GFLOP/s (FLOPs counted
by the profiler) against a bare ``torch.bmm`` of the chunk's shapes run back to back (the best this CPU
does on them); and the scikit-learn per-head loop's seconds for the same heads, for the ratio. A batched
mat-vec reads every feature once per multiply-add, so its FLOP rate is a bandwidth (2 bytes per FLOP): the
products alone, at the best back-to-back rate, set a floor on the fit's time.

    python benchmarks/probing_profile.py [--heads 1024] [--samples 2000] [--d-head 128] [--sk-heads 128]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections import defaultdict

import torch
from sklearn.linear_model import LogisticRegression
from torch.profiler import ProfilerActivity, profile

from lensiar.probes import CHUNK_BYTES, fit_logistic

warnings.filterwarnings("ignore")

KINDS = {"aten::bmm": "matrix products (bmm)", "aten::mm": "matrix products (bmm)",
         "aten::baddbmm": "matrix products (bmm)", "aten::matmul": None, "aten::einsum": None}


def bmm_peak(g: int, n: int, e: int, repeats: int = 20) -> float:
    """GFLOP/s of back-to-back ``[g, 1, n] @ [g, n, e]`` and ``[g, n, e] @ [g, e, 1]`` products (the fit's
    mat-vec shapes) on cache-resident data."""
    x = torch.randn(g, n, e)
    v, u = torch.randn(g, 1, n), torch.randn(g, e, 1)
    torch.bmm(v, x)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.bmm(v, x)
        torch.bmm(x, u)
    seconds = time.perf_counter() - start
    return 2 * 2 * g * n * e * repeats / seconds / 1e9


def main() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from probing import activations

    parser = argparse.ArgumentParser()
    parser.add_argument("--heads", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--d-head", type=int, default=128)
    parser.add_argument("--sk-heads", type=int, default=128, help="heads timed with scikit-learn (scaled up)")
    args = parser.parse_args()
    x, y = activations(args.heads, args.samples, args.d_head)
    n_train = int(0.8 * args.samples)
    xt, yt = x[:, :n_train], y[:n_train]
    fit_logistic(xt[:8], yt)  # warm-up
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        fit_logistic(xt, yt)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    fit_logistic(xt, yt)
    plain_seconds = time.perf_counter() - start
    by_kind: dict[str, float] = defaultdict(float)
    flops = 0.0
    bmm_seconds = 0.0
    for event in prof.key_averages():
        kind = KINDS.get(event.key, "other" if event.key.startswith("aten::") else None)
        if kind is None:
            continue
        by_kind[event.key if kind == "other" else kind] += event.self_cpu_time_total / 1e6
        if kind.startswith("matrix"):
            flops += float(event.flops or 0)
            bmm_seconds += event.self_cpu_time_total / 1e6
    total = sum(by_kind.values())
    top = sorted(by_kind.items(), key=lambda kv: -kv[1])[:8]
    chunk = max(1, CHUNK_BYTES // (4 * n_train * args.d_head))
    peak = bmm_peak(chunk, n_train, args.d_head + 1)
    sk_start = time.perf_counter()
    picked = range(0, args.heads, max(1, args.heads // args.sk_heads))  # evenly: heads differ in signal strength
    for h in picked:
        LogisticRegression(C=1.0, max_iter=1000).fit(xt[h].numpy(), yt.numpy())
    sk_seconds = (time.perf_counter() - sk_start) * args.heads / len(picked)
    result = {
        "heads": args.heads, "train_samples": n_train, "d_head": args.d_head, "chunk_heads": chunk,
        "lensiar_seconds": round(plain_seconds, 2), "lensiar_seconds_profiled": round(fit_seconds, 2),
        "sklearn_seconds_scaled": round(sk_seconds, 2), "speed_ratio": round(sk_seconds / plain_seconds, 2),
        "share_of_op_time": {k: round(v / total, 3) for k, v in top},
        "bmm_gflops_in_fit": round(flops / bmm_seconds / 1e9, 1) if bmm_seconds else None,
        "bmm_gflops_back_to_back": round(peak, 1),
        "passes_over_the_features": round(flops / (2 * args.heads * n_train * (args.d_head + 1)), 1),
        # a mat-vec reads each float32 feature (4 bytes) once per multiply-add (2 FLOPs): 2 bytes per FLOP
        "feature_stream_gb_per_s_back_to_back": round(peak * 2, 1),
        "gb_streamed": round(flops * 2 / 1e9, 1),
        "bmm_seconds_at_back_to_back_rate": round(flops / peak / 1e9, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
