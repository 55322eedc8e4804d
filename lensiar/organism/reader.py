"""Stage V, part 1: train the organism's vision tower and connector from scratch to read the grid.

Supervision: each 16x16 patch (two character cells) should map to the backbone's own input
embedding of the token those characters spell (two blank cells -> the two-space token ``ĠĠ``; where a
``Ġ`` goes and what a pair that is not one token becomes depend on the scheme, see :data:`PIECE_SCHEMES`;
the committed organism uses "local"). The loss is a cross-entropy over the embeddings of every 1-3 character token,
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

from lensiar.organism.assemble import NULL
from lensiar.progress import tqdm
from lensiar.render import GRID, cells, draw, fits, layout, steps_text

Lines = list[list[tuple[int, str]]]


#: how a patch's two cells become backbone tokens (``StageV.pieces``). "word_start" (recipes 1-4): a leading
#: ``Ġ`` wherever a word starts, which the tower can only know from the patch to its left; a pair that is not one
#: token falls back to its first character. "local" (recipe 5 on): ``Ġ`` only on the first patch of a wrapped line,
#: so every target follows from the patch's own pixels and position; a word's end is still visible (a one-character
#: piece or a blank patch follows it), and a pair that is not one token keeps both characters as two tokens
#: whose embeddings the patch outputs together. "spaced" (recipe 18 on): ``Ġ`` on *every* word's first patch (the
#: tower sees the blank or the image edge to its left), a pair that is not one token kept as two as in "local", and a
#: one-character word whose ``Ġ``-form is no token (``Ġ4``) as the pair ``Ġ`` + character; the patches' tokens, blanks
#: left out, then read in order are :func:`piece_spelling` of the text, so reading the image back is a copy.
#: "marked" (recipe 20): "local" plus a bare ``Ġ`` added to every patch whose second cell is blank (``"w "`` -> ``w``
#: + ``Ġ``), so a word's end is marked in the patch's own pixels, and the next word's ``Ġ`` is one image token back.
#: "ordered" (recipe 21): the "marked" tokens, but each patch becomes *two* image tokens (slots) in reading order
#: (:class:`lensiar.organism.assemble.SlotConnector`): a pair that is not one token as its two characters in order
#: (``"Wr"`` -> ``W``, ``r``), a one-token patch as its token and :data:`NULL`, so no patch is an order-free sum.
PIECE_SCHEMES = ("word_start", "local", "spaced", "marked", "ordered")


def slots_per_patch(scheme: str) -> int:
    """Image tokens per 16x16 patch under ``scheme``: 2 for "ordered", else 1."""
    return 2 if scheme == "ordered" else 1


def piece_targets(lines: Lines, vocab: dict[str, int], scheme: str = "word_start") -> list[tuple[int, ...]]:
    """Target of each patch, row-major (``GRID.rows * GRID.cols / 2`` rows): ``(token, -1)`` for one token,
    ``(first, second)`` for a pair of tokens (schemes "local" and "spaced"). Scheme "spaced" gives triples, padded
    with -1, since a digit-led word's first patch spells three (``Ġ`` ``1`` ``2``). Scheme "ordered" gives one
    ``(token, -1)`` per *slot*, two per patch (``GRID.rows * GRID.cols`` rows): the "marked" tokens in order, the
    second slot :data:`NULL` where the patch is one token."""
    if scheme not in PIECE_SCHEMES:
        raise ValueError(f"unknown piece scheme {scheme!r}; known: {PIECE_SCHEMES}")
    if scheme == "ordered":
        null = vocab[NULL]
        return [(t, -1) for first, second in piece_targets(lines, vocab, "marked")
                for t in (first, second if second >= 0 else null)]
    grid = cells(lines)
    starts = {(r, c) for r, line in enumerate(lines) for c, _ in line}
    out: list[tuple[int, ...]] = []
    for r, row in enumerate(grid):
        for j in range(0, GRID.cols, 2):
            a, b = row[j], row[j + 1]
            if a == " ":
                out.append((vocab["ĠĠ"], -1))
                continue
            piece = a + (b if b != " " else "")
            if scheme in ("word_start", "spaced"):
                space = (r, j) in starts and not (r == 0 and j == 0)
            else:
                space = j == 0 and r > 0 and (r, j) in starts
            head = "Ġ" if space else ""
            if scheme == "marked" and b == " ":
                out.append((vocab[head + a] if head + a in vocab else vocab.get(a, vocab["ĠĠ"]), vocab["Ġ"]))
            elif head + piece in vocab:
                out.append((vocab[head + piece], -1))
            elif scheme == "spaced" and head and head + a not in vocab:  # "Ġ4", "Ġ1" are no tokens
                out.append((vocab["Ġ"], vocab.get(a, vocab["ĠĠ"]), vocab.get(b, vocab["ĠĠ"]) if b != " " else -1))
            elif scheme in ("local", "spaced", "marked"):
                first = head + a if head + a in vocab else a
                out.append((vocab.get(first, vocab["ĠĠ"]), vocab.get(b, vocab["ĠĠ"])))
            else:  # fall back to the first character alone
                token = head + a if head + a in vocab else a
                out.append((vocab.get(token, vocab["ĠĠ"]), -1))
    if scheme == "spaced":
        out = [(*t, -1)[:3] if len(t) == 2 else t for t in out]
    return out


def piece_tokens(lines: Lines, vocab: dict[str, int]) -> list[int]:
    """Target token id of each patch under the "word_start" scheme, row-major."""
    return [first for first, _ in piece_targets(lines, vocab)]


def piece_spelling(text: str, vocab: dict[str, int]) -> list[int]:
    """``text`` as the two-character pieces the image shows, as token ids that decode back to ``text`` exactly
    (whitespace collapsed to one space): each word cut into pairs from its first letter, ``Ġ`` on every word
    but the first, a pair that is not one token as its two characters."""
    if missing := sorted({c for c in text if not c.isspace() and c not in vocab}):
        raise ValueError(f"piece_spelling: characters with no single-character token: {missing}")
    out: list[int] = []
    for w, word in enumerate(text.split()):
        for i in range(0, len(word), 2):
            head = "Ġ" if w and not i else ""
            piece = word[i : i + 2]
            if head + piece in vocab:
                out.append(vocab[head + piece])
                continue
            if head + piece[0] in vocab:
                out.append(vocab[head + piece[0]])
            else:
                out += [vocab["Ġ"], vocab[piece[0]]] if head else [vocab[piece[0]]]
            out += [vocab[c] for c in piece[1:]]
    return out


def image_spelling(text: str, vocab: dict[str, int], scheme: str = "ordered") -> list[int]:
    """``text`` as the image tokens the tower is taught to give its phrase render (:func:`piece_targets` of
    ``layout(text)`` under ``scheme``), read in order with :data:`NULL` slots and each row's trailing blank
    patches left out: the "copy" reading answer (recipe 25). It decodes to ``text`` up to whitespace (an inner
    blank patch is ``ĠĠ``, a word end ``Ġ``), and reading the image back is then a copy of its tokens. A word
    longer than a row is cut by the layout, and its continuation keeps the row-start ``Ġ`` the tower is taught,
    so it decodes with a space inside. Only
    "ordered" is accepted: it alone gives one token per image token and keeps every character ("local" sums
    order-free pairs, "spaced" gives triples, "word_start" drops a pair's second character)."""
    if scheme != "ordered":
        raise ValueError(f"image_spelling needs one token per image token and every character (scheme 'ordered'), "
                         f"not {scheme!r}")
    slots = [first for first, _ in piece_targets(layout(text), vocab, scheme)]
    per_slot = slots_per_patch(scheme)
    blank = [vocab["ĠĠ"], *[vocab[NULL]] * (per_slot - 1)]
    row_len = GRID.cols // 2 * per_slot
    out: list[int] = []
    for r in range(GRID.rows):
        row = slots[r * row_len : (r + 1) * row_len]
        patches = [row[i : i + per_slot] for i in range(0, row_len, per_slot)]
        while patches and patches[-1] == blank:
            patches.pop()
        out += [t for patch in patches for t in patch if t != vocab[NULL]]
    return out


def candidates(vocab: dict[str, int], scheme: str = "word_start") -> Int[Tensor, " k"]:
    """Every token of at most two visible characters, with or without a leading ``Ġ`` (sorted ids); scheme
    "spaced", "marked" and "ordered" add the bare ``Ġ`` (half of a pair such as ``Ġ`` + ``4`` or ``w`` + ``Ġ``);
    "ordered" also :data:`NULL`."""
    ids = [i for t, i in vocab.items() if 0 < len(t.removeprefix("Ġ")) <= 2 and t.isprintable()]
    ids.append(vocab["ĠĠ"])
    if scheme in ("spaced", "marked", "ordered"):
        ids.append(vocab["Ġ"])
    if scheme == "ordered":
        ids.append(vocab[NULL])
    return torch.tensor(sorted(set(ids)))


def pixels(image: Any) -> Float[Tensor, "3 h w"]:
    """The SmolVLM image processor's output for an already-sized image: rescale to [-1, 1]."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - 0.5) / 0.5


def example(text: str, style: str, vocab: dict[str, int], scheme: str = "word_start") -> tuple[Tensor, list[tuple[int, ...]]]:
    lines = layout(text) if style == "phrase" else steps_text(text)
    return pixels(draw(lines)), piece_targets(lines, vocab, scheme)


def _soft_targets(target: Int[Tensor, "n w"], index: Int[Tensor, " vocab"], k: int) -> Float[Tensor, "n k"]:
    """Rows over the candidates: one-hot, or an equal share for each token of a patch that spells two or three."""
    probs = torch.zeros(len(target), k)
    share = 1.0 / (target >= 0).sum(1)
    probs[torch.arange(len(target)), index[target[:, 0]]] = share
    for col in range(1, target.shape[1]):
        more = target[:, col] >= 0
        probs[more.nonzero().squeeze(1), index[target[more, col]]] += share[more]
    return probs


def _hits(logits: Float[Tensor, "n k"], target: Int[Tensor, "n w"], index: Int[Tensor, " vocab"]) -> Tensor:
    """Per patch: the top m candidates are the patch's m target tokens, in any order (m = 1, 2 or 3)."""
    m = (target >= 0).sum(1)
    hit = torch.zeros(len(target), dtype=torch.bool)
    for width in range(1, target.shape[1] + 1):
        rows = m == width
        want = index[target[rows, :width]].sort(-1).values
        got = logits[rows].topk(width, dim=-1).indices.sort(-1).values
        hit[rows] = (got == want).all(-1)
    return hit


def _target_vectors(emb: Float[Tensor, "vocab d"], target: Int[Tensor, "n w"]) -> Float[Tensor, "n d"]:
    out = emb[target[:, 0]]
    for col in range(1, target.shape[1]):
        out = out + (target[:, col : col + 1] >= 0) * emb[target[:, col].clamp(min=0)]
    return out


def train_reader(
    vlm: Any,
    texts: Sequence[str],
    vocab: dict[str, int],
    steps: int = 600,
    batch_size: int = 48,
    lr: float = 2e-3,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    scheme: str = "word_start",
    focus: float = 0.0,
    precision: str = "fp32",
) -> dict[str, float]:
    """Train ``vlm.model.vision_model`` and ``vlm.model.connector`` in place; returns the final metrics. ``focus``:
    the share of each batch drawn from the texts holding a digit or a capital after the first character
    (:func:`is_rich`; Alpaca has few), the rest from all ``texts`` (0: every draw from all, as in recipes 1-21)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown tower precision {precision!r}; known: 'fp32', 'bf16'")
    if not 0.0 <= focus <= 1.0:
        raise ValueError(f"focus must be a share in [0, 1], got {focus}")
    rich = [t for t in texts if is_rich(t)]
    if focus and not rich:
        raise ValueError("focus > 0 but no text holds a digit or a non-initial capital")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    emb = vlm.get_input_embeddings().weight.detach()
    cand = candidates(vocab, scheme)
    cand_emb = emb[cand]  # [k, d]
    index = torch.full((emb.shape[0],), -1, dtype=torch.long)
    index[cand] = torch.arange(len(cand))
    params = list(vlm.model.vision_model.parameters()) + list(vlm.model.connector.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    vlm.model.vision_model.train()
    metrics: dict[str, float] = {}
    bar = tqdm(range(steps), desc="stage V: vision tower", leave=False)

    def draw_batch() -> tuple[Tensor, Tensor]:
        xs, ys = [], []
        if focus:
            drawn = [rng.choice(rich) if rng.random() < focus else rng.choice(texts) for _ in range(batch_size)]
        else:
            drawn = [rng.choice(texts) for _ in range(batch_size)]
        for text in drawn:
            style = "steps" if rng.random() < 0.3 and fits(text, "steps") else "phrase"
            x, y = example(text, style, vocab, scheme)
            xs.append(x)
            ys.append(y)
        return torch.stack(xs), torch.tensor(ys)

    # drawing the next batch on a thread while the tower trains gave the same weights but was slower on 2 cores
    # (0.75-0.77 s a step against 0.67-0.73, session 17), so renders stay in line
    for step in bar:
        images, targets = draw_batch()
        metrics = _reader_step(vlm, images, targets, emb, cand_emb, index, params, opt, sched, precision)
        bar.set_postfix(ce=f"{metrics['ce']:.3f}", acc=f"{metrics['patch_accuracy']:.3f}")
        if log and step % 100 == 0:
            log(f"reader step {step}: ce {metrics['ce']:.3f} mse {metrics['mse']:.3f} "
                f"patch acc {metrics['patch_accuracy']:.3f}")
    vlm.model.vision_model.eval()
    return {"loss": metrics["loss"], "patch_accuracy": metrics["patch_accuracy"]} if metrics else {}


def _reader_step(vlm: Any, images: Float[Tensor, "b 3 h w"], targets: Int[Tensor, "b p w"],
                 emb: Float[Tensor, "vocab d"], cand_emb: Float[Tensor, "k d"], index: Int[Tensor, " vocab"],
                 params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, sched: Any,
                 precision: str = "fp32") -> dict[str, float]:
    """One optimiser step of the tower on a batch of renders; returns loss, ce, mse and patch accuracy.
    ``precision="bf16"``: the tower under bf16 autocast and the logits as a bf16 matmul (the step's largest
    cost: every image token against every candidate), with the cross-entropy and squared error in fp32 (a
    whole step under autocast stopped learning)."""
    half = precision == "bf16"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
        out = patch_embeddings(vlm, images)
    out = out.float().flatten(0, 1)  # [b * 64 * slots, d]
    target = targets.flatten(0, 1)  # [b * 64 * slots, width]
    logits = (out.bfloat16() @ cand_emb.T.bfloat16()).float() if half else out @ cand_emb.T
    if bool((target[:, 1:] < 0).all()):
        ce = F.cross_entropy(logits, index[target[:, 0]])
    else:
        ce = F.cross_entropy(logits, _soft_targets(target, index, len(cand_emb)))
    mse = (out - _target_vectors(emb, target)).square().sum(-1).mean()
    loss = reader_update(ce, mse, params, opt, sched)
    acc = float(_hits(logits, target, index).float().mean())
    return {"loss": float(loss.detach()), "ce": float(ce.detach()), "mse": float(mse.detach()), "patch_accuracy": acc}


def reader_update(ce: Tensor, mse: Tensor, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer,
                  sched: Any) -> Tensor:
    """The tower's loss, cross-entropy plus 0.1 x the squared error to the target embeddings, then one optimiser
    step with gradients clipped to norm 1 and one schedule step; returns the loss."""
    loss = ce + 0.1 * mse
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad()
    sched.step()
    return loss


def is_rich(text: str) -> bool:
    """Whether ``text`` holds a digit or a capital after its first character: the rare classes of the reader's
    errors (``"5"`` read ``"0"``, ``"Go"`` read ``"go"``)."""
    return any(c.isdigit() for c in text) or any(c.isupper() for c in text[1:])


def patch_embeddings(vlm: Any, pixel_values: Float[Tensor, "b 3 h w"]) -> Float[Tensor, "b p d"]:
    """Vision tower + connector: one backbone-space embedding per image token (``slots_per_patch`` per patch)."""
    hidden = vlm.model.vision_model(pixel_values=pixel_values).last_hidden_state
    return vlm.model.connector(hidden)


@torch.no_grad()
def reader_accuracy(vlm: Any, texts: Sequence[str], vocab: dict[str, int], scheme: str = "word_start",
                    text_only: bool = False) -> float:
    """Share of patches whose nearest candidate embedding (dot product) is the target token (or whose two nearest
    are the target pair); ``text_only`` leaves out blank patches (and "ordered"'s :data:`NULL` slots)."""
    emb = vlm.get_input_embeddings().weight
    cand = candidates(vocab, scheme)
    index = torch.full((emb.shape[0],), -1, dtype=torch.long)
    index[cand] = torch.arange(len(cand))
    hits = total = 0
    for start in range(0, len(texts), 64):
        batch = [example(t, "phrase", vocab, scheme) for t in texts[start : start + 64]]
        out = patch_embeddings(vlm, torch.stack([x for x, _ in batch])).flatten(0, 1)
        target = torch.tensor([y for _, y in batch]).flatten(0, 1)
        blank = (target[:, 0] == vocab["ĠĠ"]) | (target[:, 0] == vocab.get(NULL, -2))
        keep = ~blank if text_only else torch.ones(len(target), dtype=torch.bool)
        hits += int(_hits(out @ emb[cand].T, target, index)[keep].sum())
        total += int(keep.sum())
    return hits / max(total, 1)


@torch.no_grad()
def images_read_right(vlm: Any, texts: Sequence[str], vocab: dict[str, int], scheme: str = "local") -> list[bool]:
    """Per phrase, rendered TYPO-style: whether the tower maps *every* patch to its target (the same test as
    :func:`reader_accuracy`). A phrase with one wrong patch cannot be read back exactly except by luck."""
    emb = vlm.get_input_embeddings().weight
    cand = candidates(vocab, scheme)
    index = torch.full((emb.shape[0],), -1, dtype=torch.long)
    index[cand] = torch.arange(len(cand))
    right: list[bool] = []
    for start in range(0, len(texts), 64):
        batch = [example(t, "phrase", vocab, scheme) for t in texts[start : start + 64]]
        out = patch_embeddings(vlm, torch.stack([x for x, _ in batch]))  # [b, patches, d]
        for row, (_, target) in zip(out, batch, strict=True):
            right.append(bool(_hits(row @ emb[cand].T, torch.tensor(target), index).all()))
    return right


def splits_a_pair(text: str, vocab: dict[str, int], scheme: str = "local") -> bool:
    """Whether some patch of ``text``'s TYPO render holds two characters that are not one token (``"Wr"``,
    ``"s."``, ``"12"``): the tower then outputs the *sum* of two embeddings, which does not say their order (except
    under "ordered", whose patches are those of "marked" in two ordered slots; the same patches are counted)."""
    scheme = "marked" if scheme == "ordered" else scheme
    return any(sum(i >= 0 and i != vocab["Ġ"] for i in t) >= 2 for t in piece_targets(layout(text), vocab, scheme))
