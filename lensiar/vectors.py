"""Revision vectors from contrastive activations: mass-mean shift, probe weight, PCA of paired differences.

For each head (level ``head``, on ``attn.hook_z``) or layer (level ``layer``, on ``hook_resid_post``):
    mms    v = mean(pos) - mean(neg), unit-normalised
    probe  v = the unit weight of the logistic probe separating pos from neg (pointing to pos)
    pca    v = first principal component of the paired differences pos - neg within each group,
           signed to agree with mean(pos) - mean(neg)
sigma is the standard deviation of all training samples projected on v. Vectors are computed on the
training split only; the probe accuracies stored beside them are held-out accuracies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from lensiar.bundle import RevisionBundle
from lensiar.features import SampleActivations, sample_activations
from lensiar.probes import ProbeResult, probe_heads
from lensiar.samples import SampleSet

if TYPE_CHECKING:
    from lensiar.lens import Lens

METHODS = ("mms", "probe", "pca")


def mass_mean_shift(x: Float[Tensor, "n ... d"], labels: Int[Tensor, " n"]) -> Float[Tensor, "... d"]:
    """Unit ``mean(pos) - mean(neg)`` along the last axis."""
    pos = labels.bool()
    return F.normalize(x[pos].mean(0) - x[~pos].mean(0), dim=-1)


def paired_pca(x: Float[Tensor, "n ... d"], labels: Int[Tensor, " n"], groups: tuple[str, ...]) -> Float[Tensor, "... d"]:
    """First principal component of within-group differences mean(pos) - mean(neg), signed like the mean shift."""
    diffs = []
    for g in dict.fromkeys(groups):
        rows = torch.tensor([i for i, gi in enumerate(groups) if gi == g])
        lab = labels[rows].bool()
        if lab.any() and (~lab).any():
            diffs.append(x[rows][lab].mean(0) - x[rows][~lab].mean(0))
    if len(diffs) < 2:
        raise ValueError("pca needs at least two groups holding both a pos and a neg sample")
    d = torch.stack(diffs)  # [p, ..., d]
    flat = d.movedim(0, -2)  # [..., p, d]
    # uncentred: the direction that best explains the differences themselves (not their spread around the mean)
    _, _, vh = torch.linalg.svd(flat, full_matrices=False)
    v = vh[..., 0, :]
    sign = torch.sign((v * d.mean(0)).sum(-1, keepdim=True))
    return F.normalize(v * torch.where(sign == 0, 1.0, sign), dim=-1)


def spread(x: Float[Tensor, "n ... d"], v: Float[Tensor, "... d"]) -> Float[Tensor, "..."]:
    """Standard deviation of the samples projected on ``v``."""
    return (x * v).sum(-1).std(0)


def extract(
    lens: Lens,
    samples: SampleSet | SampleActivations,
    method: str = "mms",
    level: str = "head",
    val_fraction: float = 0.25,
    seed: int = 0,
    ranking: ProbeResult | None = None,
    defaults: dict[str, Any] | None = None,
    gate: bool = False,
    batch_size: int = 16,
    progress: bool = True,
) -> RevisionBundle:
    """Revision vectors for every head or layer, as a :class:`RevisionBundle`.

    Args:
        samples: a :class:`SampleSet` (read through ``lens``) or activations already read.
        method: ``mms``, ``probe`` or ``pca``; level: ``head`` or ``layer``.
        ranking: probes of the same activations and split (computed when not given).
        gate: also store a conditional-revision gate (the best layer probe); only meaningful for
            the ``query`` strategy, whose labels are harmful vs harmless prompts.
        defaults: default ``alpha`` / ``top_k`` recorded in the bundle.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if level not in ("head", "layer"):
        raise ValueError(f"unknown level {level!r}; use 'head' or 'layer'")
    if isinstance(samples, SampleActivations):
        acts = samples
    else:
        acts = sample_activations(lens, samples, batch_size=batch_size, progress=progress)
    if ranking is None:
        ranking = probe_heads(None, acts, val_fraction=val_fraction, seed=seed)
    train, _ = acts.split(val_fraction, seed)
    if set(train.ids) != set(ranking.train_ids):
        raise ValueError("the ranking was made on another split of these samples; pass the same val_fraction and seed")
    x = train.z if level == "head" else train.resid
    if method == "mms":
        v = mass_mean_shift(x, train.labels)
    elif method == "probe":
        v = F.normalize(ranking.head_weight if level == "head" else ranking.layer_weight, dim=-1)
    else:
        v = paired_pca(x, train.labels, train.groups)
    sigma = spread(x, v)
    acc = ranking.accuracy if level == "head" else ranking.layer_accuracy
    loss = ranking.loss if level == "head" else ranking.layer_loss
    model = lens.spec.to_dict()
    data = acts.samples.summary()
    data.update(train_ids=list(ranking.train_ids), val_ids=list(ranking.val_ids), seed=seed,
                val_fraction=val_fraction)
    return RevisionBundle(
        vectors=v.contiguous(), sigma=sigma.contiguous(), accuracy=acc.clone(), level=level, model=model,  # type: ignore[arg-type]
        method=method, strategy=acts.samples.strategy, data=data,
        defaults=defaults or {"alpha": 1.0, "top_k": 8 if level == "head" else 1},
        gate=ranking.gate() if gate else None, loss=loss.clone(),
    )
