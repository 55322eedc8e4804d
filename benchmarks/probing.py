"""All-head probing: lensiar's batched probes against a per-head scikit-learn loop (ITI's procedure).

Same activations for both, split 80% train / 20% held out:
  --data synthetic (default): 1024 heads x 2000 samples x d_head 128 (Llama-7B's head grid), Gaussian
      with a planted class signal whose strength varies by head and a random scale per head (seed 0);
  --data smollm2: real SmolLM2-135M-Instruct attn.hook_z at the last prompt token (270 heads x
      d_head 64) for --n AdvBench harmful and --n Alpaca harmless prompts (query strategy, seed 0). scikit-learn fits LogisticRegression(C=1, max_iter=1000) once per head
on the raw features, as ITI did; lensiar fits all heads at once (C=1 on per-head scaled features).
Both stop on scikit-learn's default rule (every entry of the mean loss's gradient below 1e-4).
Prints seconds (median of --repeats runs each), the speed ratio and the accuracy gap.
Goal: >= 5x faster at equal accuracy (1 point).

    python benchmarks/probing.py [--heads 1024] [--samples 2000] [--d-head 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from tqdm.auto import tqdm

from lensiar.probes import accuracy, fit_logistic

warnings.filterwarnings("ignore")
T = TypeVar("T")


def activations(heads: int, samples: int, d_head: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (samples,), generator=g)
    strength = torch.linspace(0.0, 0.6, heads).view(heads, 1, 1)
    direction = torch.randn(heads, 1, d_head, generator=g)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    scale = torch.exp(torch.randn(heads, 1, 1, generator=g))  # heads differ in scale, as real ones do
    x = (torch.randn(heads, samples, d_head, generator=g) + labels.view(1, -1, 1) * strength * direction * 4) * scale
    return x, labels


def timed(repeats: int, run: Callable[[], T]) -> tuple[float, T]:
    """Median wall-clock seconds of ``repeats`` runs (shared machines are noisy), and the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--heads", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--d-head", type=int, default=128)
    parser.add_argument("--data", choices=["synthetic", "smollm2"], default="synthetic")
    parser.add_argument("--n", type=int, default=256, help="prompts per side for --data smollm2")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side; the median is reported")
    args = parser.parse_args()
    if args.data == "synthetic":
        x, y = activations(args.heads, args.samples, args.d_head)
        label = f"synthetic, {args.heads} heads x {args.samples} samples x d_head {args.d_head}, seed 0"
    else:
        import lensiar

        lens = lensiar.Lens.from_pretrained("smollm2-135m-instruct")
        acts = lensiar.sample_activations(lens, lensiar.build_samples("query", n=args.n, seed=0))
        order = torch.randperm(len(acts), generator=torch.Generator().manual_seed(0))
        z = acts.z[order]
        y = acts.labels[order]
        x = z.permute(1, 2, 0, 3).reshape(-1, z.shape[0], z.shape[-1]).contiguous()
        label = f"SmolLM2-135M-Instruct hook_z, {x.shape[0]} heads x {x.shape[1]} samples x d_head {x.shape[2]}"
        args.heads, args.samples = x.shape[0], x.shape[1]
    n_train = int(args.samples * 0.8)
    xt, yt, xv, yv = x[:, :n_train].contiguous(), y[:n_train], x[:, n_train:], y[n_train:]

    fit_logistic(xt[:4], yt)  # warm-up: first-call allocations are not the solver's cost
    ours_s, (w, b) = timed(args.repeats, lambda: fit_logistic(xt, yt))
    ours_acc = accuracy(xv, yv, w, b).numpy()
    # scikit-learn's exact objective on the raw features
    raw_s, (w_raw, b_raw) = timed(args.repeats, lambda: fit_logistic(xt, yt, scaled=False))
    raw_acc = accuracy(xv, yv, w_raw, b_raw).numpy()

    def sklearn_loop() -> np.ndarray:
        accs = []
        for h in tqdm(range(args.heads), desc="sklearn per head", leave=False):
            clf = LogisticRegression(C=1.0, max_iter=1000).fit(xt[h].numpy(), yt.numpy())
            accs.append(clf.score(xv[h].numpy(), yv.numpy()))
        return np.array(accs)

    sk_s, sk = timed(args.repeats, sklearn_loop)

    result = {
        "data": label,
        "threads": torch.get_num_threads(), "timing": f"median of {args.repeats} runs",
        "lensiar_s": round(ours_s, 2), "sklearn_loop_s": round(sk_s, 2), "speedup": round(sk_s / ours_s, 1),
        "mean_acc_lensiar": round(float(ours_acc.mean()), 4), "mean_acc_sklearn": round(float(sk.mean()), 4),
        "max_head_acc_gap": round(float(np.abs(ours_acc - sk).max()), 4),
        "raw_objective": {"lensiar_s": round(raw_s, 2), "speedup": round(sk_s / raw_s, 1),
                          "mean_acc": round(float(raw_acc.mean()), 4),
                          "max_head_acc_gap": round(float(np.abs(raw_acc - sk).max()), 4)},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
