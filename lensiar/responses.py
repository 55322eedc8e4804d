"""Real responses for the response strategies: a model's own compliant answers and a safety-tuned model's
refusals to the same requests, generated once and cached on disk.

``single_response`` / ``multi_response`` teacher-force a refusal (pos) against a compliant answer (neg) after
each harmful request. With templated answers ("Sure, here is ...", "I'm sorry ...") the probes mostly learn
the two openings. :func:`real_responses` instead samples answers from a *complier* (for the organism: the
original SmolLM2 backbone, which carries out nearly every harmful text request) and a *refuser* (the stage-S
backbone), keeps those a judge reads as on-topic compliance and as refusals, and hands them to
:func:`lensiar.samples.build_samples` (``responses=``), text or image prompts alike.

Generations are cached as JSON lines under ``<lensiar cache>/responses/`` keyed by the model's fingerprint and
the generation settings; one line per prompt, appended as each batch finishes, so a killed run resumes and a
rerun regenerates nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lensiar.data_sources import Record
from lensiar.progress import tqdm
from lensiar.prompt import Prompt

if TYPE_CHECKING:
    from lensiar.judges import Judge
    from lensiar.lens import Lens

CACHE_VERSION = 1  #: bump when what a cached line means changes


@dataclass(frozen=True)
class Responses:
    """Kept answers per request id: on-topic compliant ones and refusals, in generation order."""

    complied: dict[str, tuple[str, ...]]
    refused: dict[str, tuple[str, ...]]
    sources: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        both = sum(1 for k in self.complied if self.complied[k] and self.refused.get(k))
        return (f"Responses({len(self.complied)} requests, {both} with both kinds; "
                f"{sum(map(len, self.complied.values()))} compliant, {sum(map(len, self.refused.values()))} refusals)")

    def usable(self, n: int) -> list[str]:
        """Request ids with at least ``n`` answers of each kind (balanced classes at ``n_responses = n``)."""
        return [k for k in self.complied if len(self.complied[k]) >= n and len(self.refused.get(k, ())) >= n]


def _prompt_key(prompt: Prompt) -> str:
    if prompt.images:
        raise ValueError("responses are generated on text prompts (teacher-forced after text or image prompts later)")
    return hashlib.sha256(json.dumps([prompt.text, prompt.system]).encode()).hexdigest()[:32]


def cache_file(lens: Lens, settings: dict[str, Any], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where generations of ``lens`` under ``settings`` are cached."""
    from lensiar.models import cache_dir as lensiar_cache

    root = Path(cache_dir) if cache_dir is not None else lensiar_cache() / "responses"
    key = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **settings}, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"{lens.spec.fingerprint}-{key}.jsonl"


def _read_cache(path: Path, n: int) -> dict[str, list[str]]:
    """Complete lines of a cache file; a torn last line (killed mid-write) or a malformed one is skipped."""
    found: dict[str, list[str]] = {}
    if not path.is_file():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (isinstance(entry, dict) and isinstance(entry.get("key"), str) and isinstance(entry.get("responses"), list)
                and len(entry["responses"]) == n and all(isinstance(r, str) for r in entry["responses"])):
            found[entry["key"]] = entry["responses"]
    return found


def generate_cached(
    lens: Lens,
    prompts: Sequence[Prompt],
    n: int = 4,
    max_new_tokens: int = 48,
    temperature: float = 0.8,
    seed: int = 0,
    batch_size: int = 16,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> list[list[str]]:
    """``n`` answers per text prompt: the first greedy, the rest sampled at ``temperature`` (top-p 0.95) under a
    seed fixed per batch. Cached (see the module docstring); returns one list of ``n`` answers per prompt."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    settings = {"n": n, "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    path = cache_file(lens, settings, cache_dir)
    keys = [_prompt_key(p) for p in prompts]
    cached = _read_cache(path, n)
    missing = list(dict.fromkeys(k for k in keys if k not in cached))
    by_key = dict(zip(keys, prompts, strict=True))
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        chunks = [missing[i : i + batch_size] for i in range(0, len(missing), batch_size)]
        with path.open("a", encoding="utf-8") as out:
            for chunk in tqdm(chunks, desc=f"responses ({path.name[:12]})", disable=not progress, leave=False):
                batch = [by_key[k] for k in chunk]
                rounds = [lens.generate(batch, max_new_tokens=max_new_tokens, batch_size=batch_size)]
                torch.manual_seed(int(chunk[0][:8], 16) ^ seed)
                for _ in range(n - 1):
                    rounds.append(lens.generate(batch, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                                do_sample=True, temperature=temperature, top_p=0.95))
                for j, k in enumerate(chunk):
                    cached[k] = [r[j] for r in rounds]
                    out.write(json.dumps({"key": k, "responses": cached[k]}) + "\n")
                out.flush()
                os.fsync(out.fileno())
    return [list(cached[k]) for k in keys]


def real_responses(
    requests: Sequence[Record],
    complier: Lens,
    refuser: Lens,
    candidates: int = 6,
    judge: Judge | None = None,
    max_new_tokens: int = 48,
    seed: int = 0,
    system: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Responses:
    """Answers of ``complier`` the ``judge`` reads as on-topic compliance, and of ``refuser`` it reads as
    refusals, from ``candidates`` generations per request each (deduplicated, in generation order)."""
    from lensiar.judges import default_judge

    judge = judge if judge is not None else default_judge()
    prompts = [Prompt(r.text, system=system) for r in requests]
    texts = [r.text for r in requests]
    kept: list[dict[str, tuple[str, ...]]] = []
    for lens, want in ((complier, "on_topic_compliance"), (refuser, "refusal")):
        answers = generate_cached(lens, prompts, candidates, max_new_tokens, seed=seed, cache_dir=cache_dir,
                                  progress=progress)
        flat = [a for group in answers for a in group]
        verdicts = judge.verdicts([t for t in texts for _ in range(candidates)], flat)
        side: dict[str, tuple[str, ...]] = {}
        for i, rec in enumerate(requests):
            mine = zip(answers[i], verdicts[i * candidates : (i + 1) * candidates], strict=True)
            side[rec.id] = tuple(dict.fromkeys(a.strip() for a, v in mine if v == want and a.strip()))
        kept.append(side)
    sources = {"complier": complier.spec.architecture + " " + complier.spec.fingerprint,
               "refuser": refuser.spec.architecture + " " + refuser.spec.fingerprint, "candidates": candidates,
               "max_new_tokens": max_new_tokens, "seed": seed, "judge": judge.name}
    return Responses(kept[0], kept[1], sources)
