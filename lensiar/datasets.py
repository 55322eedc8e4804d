"""Evaluation datasets: a generic loader (CSV / JSON / JSONL + column mapping + optional image folder)
and presets for the benchmark files in ``../shared/data``. Nothing is downloaded; every loader takes a path.

An :class:`Item` is one prompt: its text, an optional image (a path, or a renderer's output for
typographic variants), a category and whether the request is harmful. Images are checked to
exist when the dataset is loaded, so a run never dies half-way on a missing file.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from lensiar.data_sources import data_dir
from lensiar.prompt import Prompt
from lensiar.render import FIGSTEP_PROMPT, fits, render_phrase


class DatasetError(ValueError):
    """A dataset file or preset cannot be loaded (the message names the file and the problem)."""


@dataclass(frozen=True)
class Item:
    """One evaluation prompt. ``image`` is a file path, a PIL image, or ``None`` (text only)."""

    id: str
    text: str
    harmful: bool
    category: str = ""
    image: Path | Image.Image | None = None
    meta: Mapping[str, str] = field(default_factory=dict)

    def request(self) -> str:
        """What is asked, for a judge: the phrase or instruction an image carries (``meta["request"]``,
        ``meta["key_phrase"]`` or ``meta["instruction"]``), else the text."""
        for key in ("request", "key_phrase", "instruction"):
            if self.meta.get(key):
                return str(self.meta[key])
        return self.text

    def prompt(self) -> Prompt:
        """The item as a :class:`Prompt` (with its image, if any)."""
        if self.image is None:
            return Prompt(self.text)
        image = Image.open(self.image).convert("RGB") if isinstance(self.image, Path) else self.image
        return Prompt(self.text, images=(image,))


@dataclass(frozen=True)
class Dataset:
    name: str
    items: tuple[Item, ...]
    source: str

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        harmful = sum(i.harmful for i in self.items)
        images = sum(i.image is not None for i in self.items)
        return (f"Dataset({self.name!r}: {len(self)} items, {harmful} harmful, {images} with images, "
                f"{len(self.categories())} categories)")

    def categories(self) -> Counter[str]:
        """Number of items per category."""
        return Counter(i.category for i in self.items)

    def subset(self, n: int | None, seed: int = 0) -> Dataset:
        """``n`` items drawn without replacement under ``seed`` (all when ``n`` is None or larger)."""
        import random

        if n is None or n >= len(self.items):
            return self
        picked = sorted(random.Random(seed).sample(range(len(self.items)), n))
        return Dataset(self.name, tuple(self.items[i] for i in picked), self.source)


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a CSV, JSON (a list, or a dict of id -> row) or JSONL file."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"dataset file {p} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            with p.open(newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh))
        if suffix == ".jsonl":
            return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        if suffix == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                return [{"id": k, **v} if isinstance(v, dict) else {"id": k, "value": v} for k, v in data.items()]
            if isinstance(data, list):
                return data
            raise DatasetError(f"{p}: a JSON dataset must be a list of rows or a dict of id -> row")
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{p} is malformed: {err}") from None
    raise DatasetError(f"{p}: unsupported format {suffix!r} (use .csv, .json or .jsonl)")


def load_dataset(
    path: str | os.PathLike[str],
    text: str = "text",
    id: str | None = None,
    category: str | None = None,
    image: str | None = None,
    image_dir: str | os.PathLike[str] | None = None,
    harmful: bool | str = True,
    name: str | None = None,
) -> Dataset:
    """Generic loader: ``text`` / ``id`` / ``category`` / ``image`` name the columns; ``harmful`` is a constant
    or the name of a column whose truthy values ("1", "true", "unsafe", "harmful") mark harmful rows."""
    rows = read_rows(path)
    if not rows:
        raise DatasetError(f"dataset {path} is empty")
    folder = Path(image_dir) if image_dir is not None else None
    items = []
    for k, row in enumerate(rows):
        if not isinstance(row, dict) or text not in row:
            have = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise DatasetError(f"{path}: row {k} has no column {text!r} (columns: {have})")
        img: Path | None = None
        if image is not None and row.get(image):
            if folder is None:
                raise DatasetError(f"{path} names images in column {image!r}; pass image_dir= (the folder holding them)")
            img = folder / str(row[image])
            if not img.is_file():
                raise DatasetError(f"{path}: row {k} names image {img}, which does not exist")
        flag = harmful if isinstance(harmful, bool) else str(row.get(harmful, "")).strip().lower() in {
            "1", "true", "yes", "unsafe", "harmful"}
        items.append(Item(str(row[id]) if id else f"{Path(path).stem}/{k}", str(row[text]), bool(flag),
                          str(row.get(category, "")) if category else "", img))
    return Dataset(name or Path(path).stem, tuple(items), str(path))


# ---------------------------------------------------------------------------------------------- presets
def _safebench(root: Path, variant: str, **_: Any) -> Dataset:
    """FigStep SafeBench: the real 500 typographic PNGs with FigStep's fixed prompt (``variant="text"``: the question)."""
    folder = root / "figstep_safebench" / "images" / "SafeBench"
    items = []
    for row in read_rows(root / "figstep_safebench" / "safebench.csv"):
        cid, tid = row["category_id"], row["task_id"]
        rid = f"safebench/{cid}_{tid}"
        if variant == "text":
            items.append(Item(rid, row["question"], True, row["category_name"]))
            continue
        png = folder / f"query_ForbidQI_{cid}_{tid}_6.png"
        if not png.is_file():
            raise DatasetError(f"SafeBench image {png} is missing")
        items.append(Item(rid, FIGSTEP_PROMPT, True, row["category_name"], png, {"instruction": row["instruction"]}))
    return Dataset("safebench" + ("" if variant == "image" else f"-{variant}"), tuple(items), str(folder.parent))


def _mm_safetybench(root: Path, variant: str, **_: Any) -> Dataset:
    """MM-SafetyBench questions. ``typo``: key phrase rendered by lensiar + the rephrased question;
    ``text``: the changed question (all 1680). Key phrases too long for one image are left out of ``typo``. The SD images are not available offline (``sd`` / ``sd_typo`` refuse)."""
    if variant in ("sd", "sd_typo"):
        raise DatasetError("MM-SafetyBench's Stable Diffusion images are not in ../shared/data and lensiar does not "
                           "download them; use variant='typo' (rendered by lensiar) or 'text'")
    items = []
    for path in sorted((root / "mm_safetybench" / "processed_questions").glob("*.json")):
        for row in read_rows(path):
            rid = f"mm_safetybench/{path.stem}/{row['id']}"
            if variant == "text":
                items.append(Item(rid, row["Changed Question"], True, path.stem))
            else:
                phrase = row["Key Phrase"]
                if not fits(phrase):  # longer than one typographic image holds: left out of the typo variant
                    continue
                items.append(Item(rid, row["Rephrased Question"], True, path.stem, render_phrase(phrase),
                                  {"key_phrase": phrase}))
    if not items:
        raise DatasetError(f"no MM-SafetyBench question files under {root / 'mm_safetybench'}")
    return Dataset(f"mm_safetybench-{variant}", tuple(items), str(root / "mm_safetybench"))


def _vlguard(root: Path, variant: str, image_dir: str | os.PathLike[str] | None = None, **_: Any) -> Dataset:
    """VLGuard test: ``safe_safes`` / ``safe_unsafes`` (safe images) and ``unsafes`` (unsafe images).
    Images are not redistributable here: give ``image_dir`` to attach them (else text only, noted in meta)."""
    if variant not in ("safe_safes", "safe_unsafes", "unsafes"):
        raise DatasetError(f"VLGuard variant must be safe_safes, safe_unsafes or unsafes, got {variant!r}")
    folder = Path(image_dir) if image_dir is not None else None
    items = []
    for entry in read_rows(root / "vlguard" / "test.json"):
        for k, pair in enumerate(entry["instr-resp"]):
            key = {"safe_safes": "safe_instruction", "safe_unsafes": "unsafe_instruction", "unsafes": "instruction"}[variant]
            if (variant == "unsafes") == bool(entry["safe"]) or key not in pair:
                continue
            img: Path | None = None
            if folder is not None:
                img = folder / entry["image"]
                if not img.is_file():
                    raise DatasetError(f"VLGuard image {img} does not exist (image_dir={folder})")
            items.append(Item(f"vlguard/{entry['id']}/{k}", pair[key], variant != "safe_safes", entry["image"].split("/")[0],
                              img, {"image_file": entry["image"]}))
    return Dataset(f"vlguard-{variant}", tuple(items), str(root / "vlguard" / "test.json"))


def _csv_text(rel: str, column: str, harmful: bool, category: str | None = None,
              keep: Callable[[dict[str, Any]], bool] | None = None, name: str = "") -> Callable[..., Dataset]:
    def load(root: Path, variant: str, **_: Any) -> Dataset:
        rows = read_rows(root / rel)
        items = tuple(Item(f"{name}/{k}", r[column], harmful, r.get(category, "") if category else "")
                      for k, r in enumerate(rows) if keep is None or keep(r))
        return Dataset(name, items, str(root / rel))

    return load


def _xstest(root: Path, variant: str, **_: Any) -> Dataset:
    """XSTest v2: ``safe`` (250 over-refusal probes), ``unsafe`` (200 contrasts) or ``all``."""
    if variant not in ("safe", "unsafe", "all"):
        raise DatasetError(f"XSTest variant must be safe, unsafe or all, got {variant!r}")
    items = tuple(Item(f"xstest/{r['id']}", r["prompt"], r["label"] == "unsafe", r["type"])
                  for r in read_rows(root / "xstest" / "xstest_prompts.csv") if variant in ("all", r["label"]))
    return Dataset(f"xstest-{variant}", items, str(root / "xstest"))


def _alpaca(root: Path, variant: str, **_: Any) -> Dataset:
    """Alpaca, harmless: ``val`` = refusal_direction's harmless_val (held out by the organism), ``all`` = 31,323."""
    if variant == "val":
        rows = read_rows(root / "refusal_direction_splits" / "harmless_val.json")
    else:
        rows = read_rows(root / "alpaca_harmless" / "alpaca.json")
    return Dataset(f"alpaca-{variant}", tuple(Item(f"alpaca/{k}", r["instruction"], False) for k, r in enumerate(rows)),
                   str(root / "alpaca_harmless"))


def _mm_vet(root: Path, variant: str, **_: Any) -> Dataset:
    """MM-Vet v1: 218 questions on 200 images; ``meta["answer"]`` is the reference (``<AND>``/``<OR>`` syntax)."""
    folder = root / "mm_vet" / "images"
    items = []
    for row in read_rows(root / "mm_vet" / "mm-vet.json"):
        img = folder / row["imagename"]
        if not img.is_file():
            raise DatasetError(f"MM-Vet image {img} is missing")
        items.append(Item(f"mm_vet/{row['id']}", row["question"], False, ",".join(row["capability"]), img,
                          {"answer": row["answer"]}))
    return Dataset("mm_vet", tuple(items), str(root / "mm_vet"))


PRESETS: dict[str, tuple[Callable[..., Dataset], str]] = {
    "safebench": (_safebench, "image"),
    "mm_safetybench": (_mm_safetybench, "typo"),
    "vlguard": (_vlguard, "unsafes"),
    "advbench": (_csv_text("advbench/harmful_behaviors.csv", "goal", True, name="advbench"), ""),
    "harmbench": (_csv_text("harmbench/harmbench_behaviors_text_test.csv", "Behavior", True, "SemanticCategory",
                            lambda r: r["FunctionalCategory"] == "standard", name="harmbench"), ""),
    "xstest": (_xstest, "safe"),
    "alpaca": (_alpaca, "val"),
    "mm_vet": (_mm_vet, ""),
}


def load_preset(name: str, root: str | os.PathLike[str] | None = None, variant: str | None = None,
                image_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """A benchmark from ``root`` (default ``../shared/data``); see :data:`PRESETS` for names and variants."""
    if name not in PRESETS:
        raise DatasetError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    loader, default = PRESETS[name]
    dataset = loader(data_dir(root), variant or default, image_dir=image_dir)
    if not dataset.items:
        raise DatasetError(f"preset {name!r} (variant {variant or default!r}) is empty")
    return dataset


def presets() -> Sequence[str]:
    """Names accepted by :func:`load_preset`."""
    return sorted(PRESETS)
