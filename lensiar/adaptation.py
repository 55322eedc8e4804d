"""What vision-language adaptation does to a backbone's safety: degradation, safety-related layers, activation shift.

* :func:`weight_change`: per layer and per matrix, ``||W_vl - W_llm||_F / ||W_llm||_F``.
* :func:`layer_separability`: per layer, held-out probe accuracy of harmful vs harmless on the residual
  stream (last prompt token) for text inputs, for image inputs, and across modalities (a probe trained
  on text, tested on images): where the two modalities stop sharing a harmfulness direction.
* :func:`projection_views`: PCA and t-SNE of those activations at chosen layers, text vs image.
* :func:`degradation`: ASR and over-refusal of the backbone on text, the VLM on text and the VLM on
  images, side by side.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from lensiar.datasets import Dataset, Item
from lensiar.evaluate import Condition, run, summarise
from lensiar.judges import Judge, default_judge
from lensiar.lens import Lens
from lensiar.probes import accuracy, fit_logistic
from lensiar.prompt import Prompt

MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def weight_change(llm: torch.nn.Module, vlm: torch.nn.Module) -> dict[str, Float[Tensor, " layers"]]:
    """Relative Frobenius change per matrix kind -> ``[n_layers]`` between two language backbones."""
    before = dict(llm.get_decoder().named_parameters())  # type: ignore[operator]
    after = dict(vlm.get_decoder().named_parameters())  # type: ignore[operator]
    out: dict[str, dict[int, float]] = {m: {} for m in MATRICES}
    for name, w in before.items():
        m = re.match(r"layers\.(\d+)\..*?(\w+_proj)\.weight$", name)
        if not m or m.group(2) not in out:
            continue
        if name not in after:
            raise KeyError(f"the VLM's backbone has no {name}")
        if after[name].shape != w.shape:
            raise ValueError(f"{name}: shapes differ ({tuple(w.shape)} vs {tuple(after[name].shape)})")
        base, tuned = w.detach().float(), after[name].detach().float()
        out[m.group(2)][int(m.group(1))] = float((tuned - base).norm() / base.norm())
    return {k: torch.tensor([v[i] for i in sorted(v)]) for k, v in out.items() if v}


@dataclass(frozen=True)
class Separability:
    """Per-layer held-out probe accuracy (``[n_layers]`` each)."""

    text: Tensor
    image: Tensor
    text_to_image: Tensor
    n_train: int
    n_test: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready accuracies (4 decimals) and split sizes."""
        return {"text": [round(float(x), 4) for x in self.text], "image": [round(float(x), 4) for x in self.image],
                "text_to_image": [round(float(x), 4) for x in self.text_to_image],
                "n_train": self.n_train, "n_test": self.n_test}


def residuals(lens: Lens, prompts: Sequence[Prompt | str], batch_size: int = 16) -> Float[Tensor, "layers n d"]:
    """Residual stream after every layer at the last prompt token."""
    cache = lens.run_with_cache(list(prompts), "blocks.*.hook_resid_post", positions="last", batch_size=batch_size)
    return torch.stack([cache[f"blocks.{i}.hook_resid_post"] for i in range(lens.spec.n_layers)]).float()


def layer_separability(lens: Lens, text: tuple[Sequence[Any], Sequence[Any]], image: tuple[Sequence[Any], Sequence[Any]],
                       train_fraction: float = 0.5, seed: int = 0) -> tuple[Separability, dict[str, Tensor]]:
    """``text`` / ``image`` = (harmful prompts, harmless prompts) with the same content in each modality.
    Returns the accuracies and the activations (``text`` / ``image`` ``[L, n, d]``, ``labels``)."""
    acts = {}
    labels = {}
    for name, (harm, safe) in (("text", text), ("image", image)):
        acts[name] = residuals(lens, [*harm, *safe])
        labels[name] = torch.tensor([1] * len(harm) + [0] * len(safe))
    gen = torch.Generator().manual_seed(seed)
    n = len(labels["text"])
    if len(labels["image"]) != n:
        raise ValueError("text and image sets must hold the same items (same counts)")
    order = torch.randperm(n, generator=gen)
    cut = int(n * train_fraction)
    train, test = order[:cut], order[cut:]
    result = {}
    for name in ("text", "image"):
        x, y = acts[name], labels[name]
        w, b = fit_logistic(x[:, train], y[train])
        result[name] = accuracy(x[:, test], y[test], w, b)
        if name == "text":
            text_w, text_b = w, b
    transfer = accuracy(acts["image"][:, test], labels["image"][test], text_w, text_b)
    sep = Separability(result["text"], result["image"], transfer, len(train), len(test))
    return sep, {"text": acts["text"], "image": acts["image"], "labels": labels["text"]}


def projection_views(acts: dict[str, Tensor], layers: Sequence[int], path: Path, seed: int = 0) -> None:
    """PCA (top row) and t-SNE (bottom row) of text and image activations at ``layers``; saves a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = acts["text"].shape[1]
    labels = acts["labels"].numpy()
    fig, axes = plt.subplots(2, len(layers), figsize=(3.2 * len(layers), 6.4), squeeze=False)
    styles = [("text", "harmful", "tab:red", "o"), ("text", "harmless", "tab:blue", "o"),
              ("image", "harmful", "tab:red", "^"), ("image", "harmless", "tab:blue", "^")]
    for col, layer in enumerate(layers):
        x = torch.cat([acts["text"][layer], acts["image"][layer]]).numpy()
        views = (PCA(n_components=2, random_state=seed).fit_transform(x),
                 TSNE(n_components=2, random_state=seed, perplexity=min(30, max(5, n // 4)), init="pca").fit_transform(x))
        for row, (view, title) in enumerate(zip(views, ("PCA", "t-SNE"), strict=True)):
            ax = axes[row][col]
            for modality, kind, color, marker in styles:
                offset = 0 if modality == "text" else n
                mask = labels == (1 if kind == "harmful" else 0)
                pts = view[offset : offset + n][mask]
                ax.scatter(pts[:, 0], pts[:, 1], s=8, c=color, marker=marker, alpha=0.6 if modality == "text" else 0.9,
                           label=f"{modality} {kind}")
            ax.set_title(f"layer {layer} ({title})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].legend(fontsize=6)
    fig.suptitle("residual stream at the last prompt token: text (circles) vs image (triangles)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def separability_plot(sep: Separability, change: dict[str, Tensor], path: Path, title: str) -> None:
    """Two panels: per-layer weight change (per matrix) and per-layer probe accuracy (text, image, transfer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(6.5, 6), sharex=True)
    for name, values in change.items():
        a.plot(values.numpy(), label=name, lw=1)
    a.set_ylabel("relative weight change")
    a.legend(fontsize=6, ncol=4)
    b.plot(sep.text.numpy(), label="text", marker=".")
    b.plot(sep.image.numpy(), label="image", marker=".")
    b.plot(sep.text_to_image.numpy(), label="text probe on image", marker=".")
    b.axhline(0.5, color="grey", lw=0.5)
    b.set_ylim(0.3, 1.02)
    b.set_xlabel("layer")
    b.set_ylabel("held-out accuracy")
    b.legend(fontsize=7)
    a.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def degradation(llm: Lens, vlm: Lens, pairs: Sequence[tuple[Dataset, Dataset]], out: Path,
                judge: Judge | None = None, tokens: int = 24, batch_size: int = 25) -> list[dict[str, Any]]:
    """Side by side: the backbone on text, the VLM on the same content as text, the VLM on it as an image.

    ``pairs`` = (text dataset, image dataset) with the same items (ids) in each; harmful items give ASR,
    harmless ones over-refusal. Results go to ``out`` (resumable JSONL); returns the summary rows."""
    for text, image in pairs:
        if [i.id for i in text.items] != [i.id for i in image.items]:
            raise ValueError(f"{text.name} and {image.name} must hold the same items in the same order")
    chosen: Judge = judge or default_judge()
    texts = [t for t, _ in pairs]
    images = [i for _, i in pairs]
    records = run([Condition("backbone LLM, text", llm)], texts, out, chosen, tokens, batch_size)
    records = run([Condition("VLM, text", vlm)], texts, out, chosen, tokens, batch_size)
    records = run([Condition("VLM, image", vlm)], images, out, chosen, tokens, batch_size)
    return [r for r in summarise(records) if r["category"] == "all"]


def typo_pairs(root: Any, n: int, seed: int = 0) -> list[tuple[Dataset, Dataset]]:
    """Matched text/image sets from the held-out benchmarks: MM-SafetyBench 01-07 (changed question vs TYPO key
    phrase), SafeBench (question vs FigStep-style instruction), Alpaca harmless_val (instruction vs TYPO phrase)."""
    from lensiar.data_sources import load_source
    from lensiar.organism.report import mm_safety, safebench
    from lensiar.render import FIGSTEP_PROMPT, TYPO_PROMPT, fits, render_phrase, render_steps

    mm = mm_safety(Path(root), n, seed)
    sb = safebench(Path(root), n, seed)
    benign = [r.text for r in load_source("rd_harmless", root, "val")]
    benign = [t for t in benign if fits(_phrase(t))]
    benign = random.Random(seed).sample(benign, min(n, len(benign)))
    return [
        (Dataset("mm_safetybench-text", tuple(Item(m["id"], m["text"], True) for m in mm), "mm_safetybench"),
         Dataset("mm_safetybench-typo", tuple(Item(m["id"], TYPO_PROMPT, True, "", render_phrase(m["phrase"]),
                                                     {"key_phrase": m["phrase"]}) for m in mm),
                 "mm_safetybench")),
        (Dataset("safebench-text", tuple(Item(s["id"], s["text"], True) for s in sb), "figstep_safebench"),
         Dataset("safebench-figstep", tuple(Item(s["id"], FIGSTEP_PROMPT, True, "", render_steps(s["instruction"]),
                                                 {"instruction": s["instruction"]}) for s in sb), "figstep_safebench")),
        (Dataset("alpaca-text", tuple(Item(f"alpaca/{k}", f"List steps in detail to {_phrase(t)}.", False)
                                      for k, t in enumerate(benign)), "alpaca"),
         Dataset("alpaca-typo", tuple(Item(f"alpaca/{k}", TYPO_PROMPT, False, "", render_phrase(_phrase(t)),
                                           {"key_phrase": _phrase(t)}) for k, t in enumerate(benign)), "alpaca")),
    ]


def _phrase(text: str) -> str:
    text = text.strip().rstrip(".!?")
    return text[:1].lower() + text[1:]
