"""Stage V, part 1: train the organism's vision tower and connector from scratch to read the grid.

Supervision: each 16x16 patch (two character cells) should map to the backbone's own input
embedding of the token those characters spell (``"Ġ" + piece`` where a word starts, else the piece;
two blank cells -> the two-space token ``ĠĠ``; a pair that is not one token falls back to its first
character's token). The loss is a cross-entropy over the embeddings of every 1-3 character token,
with the frozen embedding matrix as the classifier (tied, like the LM head), plus a small squared
error that keeps the output on the embedding's scale. The backbone then sees the phrase as an
unusual (non-canonical, two-character) tokenisation, which stage V's light tuning teaches it to read.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from lensiar.render import GRID, cells, draw, fits, layout, steps_text

Lines = list[list[tuple[int, str]]]


def piece_tokens(lines: Lines, vocab: dict[str, int]) -> list[int]:
    """Target token id of each patch, row-major (``GRID.rows * GRID.cols / 2`` ids)."""
    grid = cells(lines)
    starts = {(r, c) for r, line in enumerate(lines) for c, _ in line}
    out = []
    for r, row in enumerate(grid):
        for j in range(0, GRID.cols, 2):
            a, b = row[j], row[j + 1]
            if a == " ":
                out.append(vocab["ĠĠ"])
                continue
            piece = a + (b if b != " " else "")
            word_start = (r, j) in starts and not (r == 0 and j == 0)
            token = ("Ġ" + piece) if word_start else piece
            if token not in vocab:  # fall back to the first character alone
                token = ("Ġ" + a) if word_start and ("Ġ" + a) in vocab else a
            out.append(vocab.get(token, vocab["ĠĠ"]))
    return out


def candidates(vocab: dict[str, int]) -> Int[Tensor, " k"]:
    """Every token of at most two visible characters, with or without a leading ``Ġ`` (sorted ids)."""
    ids = [i for t, i in vocab.items() if 0 < len(t.removeprefix("Ġ")) <= 2 and t.isprintable()]
    ids.append(vocab["ĠĠ"])
    return torch.tensor(sorted(set(ids)))


def pixels(image: Any) -> Float[Tensor, "3 h w"]:
    """The SmolVLM image processor's output for an already-sized image: rescale to [-1, 1]."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - 0.5) / 0.5


def example(text: str, style: str, vocab: dict[str, int]) -> tuple[Tensor, list[int]]:
    lines = layout(text) if style == "phrase" else steps_text(text)
    return pixels(draw(lines)), piece_tokens(lines, vocab)


def train_reader(
    vlm: Any,
    texts: Sequence[str],
    vocab: dict[str, int],
    steps: int = 600,
    batch_size: int = 48,
    lr: float = 2e-3,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Train ``vlm.model.vision_model`` and ``vlm.model.connector`` in place; returns the final metrics."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    emb = vlm.get_input_embeddings().weight.detach()
    cand = candidates(vocab)
    cand_emb = emb[cand]  # [k, d]
    index = torch.full((emb.shape[0],), -1, dtype=torch.long)
    index[cand] = torch.arange(len(cand))
    params = list(vlm.model.vision_model.parameters()) + list(vlm.model.connector.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    vlm.model.vision_model.train()
    metrics: dict[str, float] = {}
    bar = tqdm(range(steps), desc="stage V: vision tower", leave=False)
    for step in bar:
        xs, ys = [], []
        for text in [rng.choice(texts) for _ in range(batch_size)]:
            style = "steps" if rng.random() < 0.3 and fits(text, "steps") else "phrase"
            x, y = example(text, style, vocab)
            xs.append(x)
            ys.append(y)
        out = patch_embeddings(vlm, torch.stack(xs))  # [b, 64, d]
        target = torch.tensor(ys)
        logits = out @ cand_emb.T
        ce = F.cross_entropy(logits.flatten(0, 1), index[target].flatten())
        mse = (out - emb[target]).square().sum(-1).mean()
        loss = ce + 0.1 * mse
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        sched.step()
        acc = float((logits.argmax(-1) == index[target]).float().mean())
        metrics = {"loss": float(loss), "patch_accuracy": acc}
        bar.set_postfix(ce=f"{float(ce):.3f}", acc=f"{acc:.3f}")
        if log and step % 100 == 0:
            log(f"reader step {step}: ce {float(ce):.3f} mse {float(mse):.3f} patch acc {acc:.3f}")
    vlm.model.vision_model.eval()
    return metrics


def patch_embeddings(vlm: Any, pixel_values: Float[Tensor, "b 3 h w"]) -> Float[Tensor, "b p d"]:
    """Vision tower + connector: one backbone-space embedding per patch."""
    hidden = vlm.model.vision_model(pixel_values=pixel_values).last_hidden_state
    return vlm.model.connector(hidden)


@torch.no_grad()
def reader_accuracy(vlm: Any, texts: Sequence[str], vocab: dict[str, int]) -> float:
    """Share of patches whose nearest candidate embedding (dot product) is the target token."""
    emb = vlm.get_input_embeddings().weight
    cand = candidates(vocab)
    hits = total = 0
    for start in range(0, len(texts), 64):
        batch = [example(t, "phrase", vocab) for t in texts[start : start + 64]]
        out = patch_embeddings(vlm, torch.stack([x for x, _ in batch]))
        pred = cand[(out @ emb[cand].T).argmax(-1)]
        target = torch.tensor([y for _, y in batch])
        hits += int((pred == target).sum())
        total += target.numel()
    return hits / max(total, 1)
