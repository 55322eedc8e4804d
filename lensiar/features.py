"""Activations of a sample set at every head (``attn.hook_z``) and every layer (``hook_resid_post``)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensiar.progress import tqdm
from lensiar.samples import Sample, SampleSet

if TYPE_CHECKING:
    from lensiar.lens import Lens

NAMES = ["blocks.*.attn.hook_z", "blocks.*.hook_resid_post"]


@dataclass(frozen=True)
class SampleActivations:
    """What probes and extraction read: one row per sample.

    ``z`` is read at the last prompt token for prompt-only samples and averaged over the response
    tokens for teacher-forced ones; ``resid`` likewise from ``hook_resid_post``.
    """

    z: Float[Tensor, "n n_layers n_heads d_head"]
    resid: Float[Tensor, "n n_layers d_model"]
    labels: Int[Tensor, " n"]
    ids: tuple[str, ...]
    groups: tuple[str, ...]
    samples: SampleSet

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: Tensor | list[int]) -> SampleActivations:
        """The samples at indices ``keep``, activations and ids alike."""
        index = torch.as_tensor(keep, dtype=torch.long)
        picked = SampleSet(self.samples.strategy, tuple(self.samples.samples[i] for i in index.tolist()),
                           self.samples.sources)
        return SampleActivations(self.z[index], self.resid[index], self.labels[index],
                                 tuple(self.ids[i] for i in index.tolist()),
                                 tuple(self.groups[i] for i in index.tolist()), picked)

    def split(self, val_fraction: float = 0.25, seed: int = 0) -> tuple[SampleActivations, SampleActivations]:
        """Train / held-out rows, split by group exactly as :meth:`SampleSet.split`."""
        train, _ = self.samples.split(val_fraction, seed)
        in_train = {s.id for s in train.samples}
        rows = [i for i, sid in enumerate(self.ids) if sid in in_train]
        rest = [i for i, sid in enumerate(self.ids) if sid not in in_train]
        return self.subset(rows), self.subset(rest)


def _kind(sample: Sample) -> tuple[bool, bool]:
    return bool(sample.prompt.images), sample.response is not None


#: the last activations read, for the same SampleSet and Lens objects: (samples, lens, model state, activations)
_LAST: tuple[weakref.ref[SampleSet], weakref.ref[Any], tuple[tuple[int, int], ...], SampleActivations] | None = None


def _model_state(lens: Lens) -> tuple[tuple[int, int], ...]:
    """Identity and in-place version counter of every parameter and buffer: changes whenever a weight does."""
    return tuple((id(t), t._version) for t in (*lens.model.parameters(), *lens.model.buffers()))


@torch.no_grad()
def sample_activations(
    lens: Lens, samples: SampleSet, batch_size: int = 16, progress: bool = True
) -> SampleActivations:
    """Run every sample through ``lens`` once and keep z and the residual at the strategy's positions.

    The last result is remembered: asked again for the same ``samples`` object on the same ``lens``, with no
    revision active and no weight changed in place since, it is returned without a forward pass (so
    ``probe_heads(lens, samples)`` then ``extract(lens, samples, ranking=...)`` reads the model once). The
    returned tensors are shared with that memo: treat them as read-only."""
    global _LAST
    if len(samples) == 0:
        raise ValueError("no samples")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    state = _model_state(lens) if not lens._revisions else None
    if state is not None and _LAST is not None:
        last_samples, last_lens, last_state, acts = _LAST
        if last_samples() is samples and last_lens() is lens and last_state == state:
            return acts
    acts = _read_activations(lens, samples, batch_size, progress)
    _LAST = (weakref.ref(samples), weakref.ref(lens), state, acts) if state is not None else None
    return acts


def _read_activations(lens: Lens, samples: SampleSet, batch_size: int, progress: bool) -> SampleActivations:
    n = len(samples)
    spec = lens.spec
    z = torch.zeros(n, spec.n_layers, spec.n_heads, spec.d_head)
    resid = torch.zeros(n, spec.n_layers, spec.d_model)
    # a batch holds one kind of input (image or text, with or without a response)
    groups: dict[tuple[bool, bool], list[int]] = {}
    for i, s in enumerate(samples.samples):
        groups.setdefault(_kind(s), []).append(i)
    bar = tqdm(total=n, desc="activations", disable=not progress, leave=False)
    for (_, has_response), rows in groups.items():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            items = [samples.samples[i] for i in chunk]
            if has_response:
                batch, mask = lens.prepare_with_responses([s.prompt for s in items], [s.response or "" for s in items])
                weight = mask.float() / mask.float().sum(1, keepdim=True)  # mean over the response, reduced per layer
                cache = lens.run_with_cache(batch, NAMES, positions=weight)
                zs = cache.stack("attn.hook_z").transpose(0, 1)
                rs = cache.stack("hook_resid_post").transpose(0, 1)
            else:
                cache = lens.run_with_cache([s.prompt for s in items], NAMES, positions="last", batch_size=len(items))
                zs = cache.stack("attn.hook_z").transpose(0, 1)
                rs = cache.stack("hook_resid_post").transpose(0, 1)
            index = torch.tensor(chunk)
            z[index] = zs.float()
            resid[index] = rs.float()
            bar.update(len(chunk))
    bar.close()
    return SampleActivations(z, resid, samples.labels, tuple(samples.ids), tuple(s.group for s in samples.samples),
                             samples)
