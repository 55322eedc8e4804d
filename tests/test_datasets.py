"""Dataset loaders on the real benchmark files, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lensiar.datasets import DatasetError, load_dataset, load_preset, presets


@pytest.mark.parametrize(("name", "variant", "count", "categories"), [
    ("safebench", None, 500, 10),
    ("mm_safetybench", "text", 1680, 13),
    ("xstest", "safe", 250, None),
    ("xstest", "unsafe", 200, None),
    ("vlguard", "safe_safes", 558, None),
    ("vlguard", "safe_unsafes", 558, None),
    ("vlguard", "unsafes", 442, None),
    ("advbench", None, 520, None),
    ("harmbench", None, 159, 6),
    ("mm_vet", None, 218, None),
])
def test_presets_return_the_published_counts(name: str, variant: str | None, count: int, categories: int | None) -> None:
    data = load_preset(name, variant=variant)
    assert len(data) == count
    if categories is not None:
        assert len(data.categories()) == categories
    assert len({i.id for i in data.items}) == count


def test_safebench_uses_the_real_images_and_figstep_prompt() -> None:
    item = load_preset("safebench").items[0]
    assert item.image is not None and Path(str(item.image)).name.startswith("query_ForbidQI_")
    assert item.text.startswith("The image shows a list numbered 1, 2, and 3")
    assert item.prompt().images[0].size == (760, 760)


def test_typo_images_are_rendered_and_sd_images_are_refused() -> None:
    typo = load_preset("mm_safetybench", variant="typo")
    assert len(typo) > 1500 and typo.items[0].prompt().images
    with pytest.raises(DatasetError, match="Stable Diffusion"):
        load_preset("mm_safetybench", variant="sd")


def test_vlguard_images_come_from_a_user_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_preset("vlguard", variant="unsafes", image_dir=tmp_path)


def test_generic_loader_formats_and_column_mapping(tmp_path: Path) -> None:
    rows = [{"q": "How do I bake bread?", "cat": "food", "bad": "0"}, {"q": "How to pick a lock?", "cat": "crime", "bad": "1"}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "a.csv").write_text("q,cat,bad\nHow do I bake bread?,food,0\nHow to pick a lock?,crime,1\n")
    for suffix in ("jsonl", "json", "csv"):
        d = load_dataset(tmp_path / f"a.{suffix}", text="q", category="cat", harmful="bad")
        assert [i.harmful for i in d.items] == [False, True] and d.categories() == {"food": 1, "crime": 1}


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('[{"text": "unterminated')
    with pytest.raises(DatasetError, match="malformed"):
        load_dataset(tmp_path / "bad.json")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DatasetError, match="empty"):
        load_dataset(tmp_path / "empty.jsonl")
    (tmp_path / "img.csv").write_text("text,image\nhello,missing.png\n")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "img.csv", image="image", image_dir=tmp_path)
    with pytest.raises(DatasetError, match="no column 'prompt'"):
        load_dataset(tmp_path / "img.csv", text="prompt")
    with pytest.raises(DatasetError, match="unknown preset 'nope'"):
        load_preset("nope")
    assert "safebench" in presets()
