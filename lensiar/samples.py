"""Contrastive samples: the positive (safe) and negative (unsafe) sides a revision vector is read from.

Strategies (``docs/concepts.md``, "Samples"; pos is the side a revision moves towards):
    query            harmful prompt (pos) vs harmless prompt (neg), read at the last prompt token
    single_response  harmful prompt + one refusal (pos) vs + one compliant answer (neg), teacher-forced,
                     read as the mean over the response tokens; real answers with ``responses=``
                     (:mod:`lensiar.responses`), templated ones otherwise; the prompt is the request as text,
                     or drawn in an image with ``image=``
    multi_response   as single_response with several refusals and compliant answers per prompt
    modality         the harmful request as text (pos) vs the same request drawn in an image (neg)
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from PIL import Image
from torch import Tensor

from lensiar.data_sources import Record, compliant_openings, load_source
from lensiar.prompt import Prompt
from lensiar.render import TYPO_PROMPT, fits, render_phrase
from lensiar.responses import Responses

STRATEGIES = ("query", "single_response", "multi_response", "modality")


@dataclass(frozen=True)
class Sample:
    """One side of a contrast. ``label`` 1 = pos (safe side), 0 = neg; ``group`` ties the samples made from
    one source prompt (they are split together and paired for PCA)."""

    id: str
    prompt: Prompt
    label: int
    group: str
    response: str | None = None


@dataclass(frozen=True)
class SampleSet:
    """Samples of one strategy plus where they came from."""

    strategy: str
    samples: tuple[Sample, ...]
    sources: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        c = self.counts()
        return f"SampleSet({self.strategy!r}: {len(self)} samples, {c['pos']} pos / {c['neg']} neg, {c['groups']} groups)"

    @property
    def labels(self) -> Int[Tensor, " n"]:
        """``[n]`` labels, 1 = the side to move toward (e.g. refusal / text)."""
        return torch.tensor([s.label for s in self.samples])

    @property
    def ids(self) -> list[str]:
        """Sample ids, in order."""
        return [s.id for s in self.samples]

    def counts(self) -> dict[str, int]:
        """Number of samples per label and in all."""
        pos = sum(s.label for s in self.samples)
        return {"pos": pos, "neg": len(self.samples) - pos, "groups": len({s.group for s in self.samples})}

    def summary(self) -> dict[str, Any]:
        """What a bundle records about its data: strategy, counts, sources and every sample id."""
        return {"strategy": self.strategy, "counts": self.counts(), "sources": self.sources, "ids": self.ids}

    def split(self, val_fraction: float = 0.25, seed: int = 0) -> tuple[SampleSet, SampleSet]:
        """Train / held-out split by group (samples of one prompt never straddle), stratified by label."""
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        rng = random.Random(seed)
        labels_of: dict[str, set[int]] = {}
        for s in self.samples:
            labels_of.setdefault(s.group, set()).add(s.label)
        strata: dict[tuple[int, ...], list[str]] = {}
        for group, labels in sorted(labels_of.items()):
            strata.setdefault(tuple(sorted(labels)), []).append(group)
        held: set[str] = set()
        for _, groups in sorted(strata.items()):  # each label set (pos only, neg only, paired) held out alike
            rng.shuffle(groups)
            held.update(groups[: max(1, round(len(groups) * val_fraction))])
        train = tuple(s for s in self.samples if s.group not in held)
        val = tuple(s for s in self.samples if s.group in held)
        if not train or not val or len({s.label for s in train}) < 2 or len({s.label for s in val}) < 2:
            raise ValueError(f"{len(self)} samples are too few to split into train and held-out sets with both labels")
        return SampleSet(self.strategy, train, self.sources), SampleSet(self.strategy, val, self.sources)


def _as_records(items: Sequence[str | Record | Prompt] | None, source: str) -> list[Record]:
    if items is None:
        return []
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Record):
            out.append(item)
        elif isinstance(item, Prompt):
            out.append(Record(f"{source}/{i}", item.text))
        else:
            out.append(Record(f"{source}/{i}", str(item)))
    return out


def _pick(records: list[Record], n: int | None, rng: random.Random) -> list[Record]:
    records = list(records)
    rng.shuffle(records)
    return records if n is None else records[:n]


def build_samples(
    strategy: str,
    harmful: Sequence[str | Record | Prompt] | None = None,
    harmless: Sequence[str | Record | Prompt] | None = None,
    refusals: Sequence[str] | None = None,
    compliances: Callable[[Record], list[str]] | None = None,
    n: int | None = 128,
    n_responses: int = 4,
    image: Callable[[str], Image.Image] | None = None,
    image_prompt: str = TYPO_PROMPT,
    system: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    responses: Responses | None = None,
) -> SampleSet:
    """Build contrastive samples with one of :data:`STRATEGIES`.

    Args:
        harmful: harmful requests (default: AdvBench, whose "Sure, here is ..." targets give compliant answers).
            A :class:`Prompt` with images keeps its images on both sides (content in the image).
        harmless: harmless requests for ``query`` (default: refusal_direction's Alpaca ``harmless_train``).
        refusals: refusal texts (default: generic VLGuard train refusals, several phrasings).
        compliances: record -> compliant answers (default: openings built from the record's target).
        n: harmful prompts used (and as many harmless ones for ``query``); ``None`` = all.
        n_responses: refusals and compliant answers per prompt for ``multi_response``.
        image: text -> image for ``modality`` (default: :func:`lensiar.render.render_phrase`); for the response
            strategies, draws each request in an image (the prompt is then ``image_prompt`` + the image).
        image_prompt: the text that goes with the image.
        responses: real answers per request id (:func:`lensiar.responses.real_responses`) for the response
            strategies; requests with fewer than ``n_responses`` of either kind are skipped (counted in
            ``sources["skipped"]``), so the classes stay balanced.
        seed: which prompts and responses are drawn.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be an integer >= 1 (or None for all prompts), got {n!r}")
    if isinstance(n_responses, bool) or not isinstance(n_responses, int) or n_responses < 1:
        raise ValueError(f"n_responses must be an integer >= 1, got {n_responses!r}")
    rng = random.Random(seed)
    given_prompts = {i: p for i, p in enumerate(harmful or []) if isinstance(p, Prompt)}
    harm = _as_records(harmful, "harmful") if harmful is not None else load_source("advbench", data_dir)
    if not harm:
        raise ValueError("no harmful prompts given")
    order = list(range(len(harm)))
    rng.shuffle(order)
    order = order if n is None else order[:n]
    sources: dict[str, Any] = {"harmful": "given" if harmful is not None else "advbench/harmful_behaviors.csv"}

    def prompt_of(i: int) -> Prompt:
        given = given_prompts.get(i)
        return given if given is not None else Prompt(harm[i].text, system=system)

    samples: list[Sample] = []
    if strategy == "query":
        benign = _as_records(harmless, "harmless") if harmless is not None else load_source("rd_harmless", data_dir)
        sources["harmless"] = "given" if harmless is not None else "refusal_direction_splits/harmless_train.json"
        given_benign = {r.id: p for r, p in zip(benign, harmless or [], strict=False) if isinstance(p, Prompt)}
        benign = _pick(benign, len(order), rng)
        for k, i in enumerate(order):
            samples.append(Sample(harm[i].id, prompt_of(i), 1, f"pair{k}"))
        for k, rec in enumerate(benign):  # a given Prompt (e.g. with an image) is kept as it is
            prompt = given_benign.get(rec.id) or Prompt(rec.text, system=system)
            samples.append(Sample(rec.id, prompt, 0, f"pair{k}" if k < len(order) else rec.id))
    elif strategy in ("single_response", "multi_response"):
        per = 1 if strategy == "single_response" else n_responses
        if responses is not None:
            if compliances is not None or refusals is not None:
                raise ValueError("give responses= or compliances= / refusals=, not both")
            sources.update(responses=responses.sources, refusals="real (responses=)", compliances="real (responses=)")
            usable = set(responses.usable(per))
            sources["skipped"] = sum(1 for i in order if harm[i].id not in usable)
            order = [i for i in order if harm[i].id in usable]
            if not order:
                raise ValueError(f"no request has {per} compliant answer(s) and {per} refusal(s) in responses=; "
                                 "lower n_responses or generate more candidates")
        if image is not None:
            sources["image"] = "given (the request drawn in an image, with image_prompt)"
            kept = [i for i in order if fits(harm[i].text)] if image is render_phrase else order
            sources["skipped_too_long"] = len(order) - len(kept)
            order = kept
        pool = list(refusals) if refusals is not None else [r.text for r in load_source("vlguard_refusal", data_dir)]
        if responses is None:
            sources["refusals"] = "given" if refusals is not None else "vlguard/train.json (generic refusal openings)"
            sources["compliances"] = "given" if compliances is not None else "target strings ('Sure, here is ...')"
        if not pool:
            raise ValueError("no refusal texts given")

        def shown(i: int) -> Prompt:
            if image is None:
                return prompt_of(i)
            return Prompt(image_prompt, images=(image(harm[i].text),), system=system)

        for i in order:
            rec = harm[i]
            if responses is not None:
                refused, complied = list(responses.refused[rec.id][:per]), list(responses.complied[rec.id][:per])
                for j, text in enumerate(refused):
                    samples.append(Sample(f"{rec.id}+refusal{j}", shown(i), 1, rec.id, text))
                for j, text in enumerate(complied):
                    samples.append(Sample(f"{rec.id}+comply{j}", shown(i), 0, rec.id, text))
                continue
            if compliances is not None:
                complied = compliances(rec)
            elif rec.target:
                complied = compliant_openings(rec.target)
            else:
                raise ValueError(f"{rec.id} has no target string to build a compliant answer from; "
                                 "give compliances= (e.g. the model's own completions) or use AdvBench/HarmBench")
            k = min(per, len(pool), len(complied))  # as many refusals as compliant answers: balanced classes
            if k < per:
                raise ValueError(f"n_responses={per} but {rec.id} has {len(complied)} compliant answer(s) and "
                                 f"{len(pool)} refusal text(s): the classes would be unbalanced; lower n_responses "
                                 "or give more compliances= / refusals=")
            refused = rng.sample(pool, k)
            complied = complied[:k]
            for j, text in enumerate(refused):
                samples.append(Sample(f"{rec.id}+refusal{j}", shown(i), 1, rec.id, text))
            for j, text in enumerate(complied):
                samples.append(Sample(f"{rec.id}+comply{j}", shown(i), 0, rec.id, text))
    else:  # modality
        draw = image or render_phrase
        sources["image"] = "given" if image is not None else "lensiar.render.render_phrase (TYPO style)"
        for i in order:
            rec = harm[i]
            if image is None and not fits(rec.text):  # too long for one typographic image: skipped
                continue
            samples.append(Sample(f"{rec.id}+text", Prompt(rec.text, system=system), 1, rec.id))
            samples.append(Sample(f"{rec.id}+image", Prompt(image_prompt, images=(draw(rec.text),), system=system),
                                  0, rec.id))
    return SampleSet(strategy, tuple(samples), sources)
