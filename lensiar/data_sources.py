"""Real text sources for contrastive samples, read from a local copy of the shared benchmark data.

Nothing is downloaded: every function takes the data directory (default: ``$LENSIAR_DATA`` or
``../shared/data`` beside the working directory or the repository). Each record carries a stable id
``"<source>/<index>"`` so that a vector can name the data it came from.

Sources (see ``docs/concepts.md``, "Samples"):
    advbench          AdvBench ``harmful_behaviors.csv``: harmful requests with "Sure, here is ..." targets
    harmbench         HarmBench text behaviours (``split`` test / val / all) with their target strings
    rd_harmful        refusal_direction ``harmful_train`` / ``harmful_val``
    rd_harmless       refusal_direction ``harmless_train`` / ``harmless_val`` (Alpaca instructions)
    vlguard_refusal   generic first sentences of VLGuard train refusals, most frequent first
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class Record:
    """One text from a benchmark: ``id`` is ``"<source>/<index>"``; ``target`` a compliant opening if known."""

    id: str
    text: str
    target: str | None = None
    category: str | None = None


class DataNotFoundError(FileNotFoundError):
    """The benchmark data directory or one of its files is missing."""


def data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The benchmark data directory: ``path``, else ``$LENSIAR_DATA``, else the first ``../shared/data`` found."""
    candidates = [Path(path)] if path is not None else []
    if path is None and os.environ.get("LENSIAR_DATA"):
        candidates.append(Path(os.environ["LENSIAR_DATA"]))
    if path is None:
        here = Path(__file__).resolve().parent
        candidates += [Path.cwd() / ".." / "shared" / "data", here.parent.parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise DataNotFoundError(f"benchmark data directory not found (tried {tried}); pass data_dir= or set LENSIAR_DATA")


def _file(root: Path, rel: str) -> Path:
    f = root / rel
    if not f.is_file():
        raise DataNotFoundError(f"{f} is missing from the benchmark data directory {root}")
    return f


@lru_cache(maxsize=16)
def _advbench(root: Path) -> tuple[Record, ...]:
    with open(_file(root, "advbench/harmful_behaviors.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    return tuple(Record(f"advbench/{i}", r["goal"], r["target"]) for i, r in enumerate(rows))


@lru_cache(maxsize=16)
def _harmbench(root: Path, split: str) -> tuple[Record, ...]:
    name = {"all": "harmbench_behaviors_text_all.csv", "test": "harmbench_behaviors_text_test.csv",
            "val": "harmbench_behaviors_text_val.csv"}
    if split not in name:
        raise ValueError(f"HarmBench split must be one of {sorted(name)}, got {split!r}")
    targets = json.loads(_file(root, "harmbench/harmbench_targets_text.json").read_text())
    with open(_file(root, f"harmbench/{name[split]}"), newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["FunctionalCategory"] == "standard"]
    return tuple(Record(f"harmbench_{split}/{r['BehaviorID']}", r["Behavior"], targets.get(r["BehaviorID"]),
                        r["SemanticCategory"]) for r in rows)


@lru_cache(maxsize=16)
def _refusal_direction(root: Path, side: str, split: str) -> tuple[Record, ...]:
    if side not in ("harmful", "harmless") or split not in ("train", "val"):
        raise ValueError(f"refusal_direction split is harmful|harmless x train|val, got {side!r}, {split!r}")
    rows = json.loads(_file(root, f"refusal_direction_splits/{side}_{split}.json").read_text())
    return tuple(Record(f"rd_{side}_{split}/{i}", r["instruction"], None, r.get("category"))
                 for i, r in enumerate(rows))


_GENERIC_REFUSAL = re.compile(r"(that|this|request|query|question|information)\.$|^No, I cannot\.$")


@lru_cache(maxsize=16)
def _vlguard_refusals(root: Path) -> tuple[Record, ...]:
    entries = json.loads(_file(root, "vlguard/train.json").read_text())
    counts: Counter[str] = Counter()
    for e in entries:
        for pair in e["instr-resp"]:
            refused = "unsafe_instruction" in pair or ("instruction" in pair and not e["safe"])
            if refused:
                first = re.split(r"(?<=[.!])\s", pair["response"].strip())[0]
                if _GENERIC_REFUSAL.search(first) and len(first) < 80:
                    counts[first] += 1
    ranked = sorted(counts, key=lambda s: (-counts[s], s))
    return tuple(Record(f"vlguard_refusal/{i}", s) for i, s in enumerate(ranked))


def load_source(name: str, root: str | os.PathLike[str] | None = None, split: str = "train") -> list[Record]:
    """Records of one named source (``advbench``, ``harmbench``, ``rd_harmful``, ``rd_harmless``,
    ``vlguard_refusal``); ``split`` picks train / val (refusal_direction) or test / val / all (HarmBench)."""
    base = data_dir(root)
    if name == "advbench":
        return list(_advbench(base))
    if name == "harmbench":
        return list(_harmbench(base, "test" if split == "train" else split))
    if name == "rd_harmful":
        return list(_refusal_direction(base, "harmful", split))
    if name == "rd_harmless":
        return list(_refusal_direction(base, "harmless", split))
    if name == "vlguard_refusal":
        return list(_vlguard_refusals(base))
    raise ValueError(f"unknown source {name!r}; known: advbench, harmbench, rd_harmful, rd_harmless, vlguard_refusal")


def compliant_openings(target: str) -> list[str]:
    """Several compliant openings built from one "Sure, here is X" target (HarmBench / AdvBench style)."""
    body = re.sub(r"^(sure|certainly|of course)[,!.]?\s*", "", target.strip(), flags=re.I) or "here is what you asked for"
    capital = body[0].upper() + body[1:]
    return [target.strip(), f"Certainly! {capital}:\n\n1.", f"Of course. {capital}.", f"Absolutely, {body}:\n\nStep 1:"]
