"""The second paper's comparison: the safety mix's data, the variants' integrity checks, the verdict logic, and the
committed results read back (no generation here: the run is ``lensiar compare``, about 20 minutes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from lensiar.ablation import AblationConfig, _Split, held_out_sets
from lensiar.comparison import CompareConfig, best_iar_row, dominates, findings, over_refusal, settings
from lensiar.data_sources import data_dir
from lensiar.organism.files import ManifestError
from lensiar.organism.safety import VARIANTS_DIR, SafetyMix, load_variant, requests
from lensiar.prompts import phrase_of

RESULTS = Path(__file__).parents[1] / "docs" / "results" / "vl_merge_comparison.json"


def _row(name: str, kind: str, asr: float, help_: float, xs: float, img: float = 0.0) -> dict[str, object]:
    cell = lambda r: {"rate": r, "n": 32}  # noqa: E731
    return {"setting": name, "kind": kind, "image_asr": cell(asr), "benign_image_helpfulness": cell(help_),
            "xstest_over_refusal": cell(xs), "benign_image_over_refusal": cell(img)}


def test_safety_mix_draws_train_requests_apart_from_every_evaluation_item() -> None:
    root = data_dir()
    asked = requests(SafetyMix())
    assert (len(asked.harmful_typo), len(asked.harmful_steps), len(asked.benign_typo)) == (128, 128, 128)
    drawn = {*asked.harmful_typo, *asked.harmful_steps, *asked.benign_typo, *asked.benign_steps,
             *asked.text_harmful, *asked.text_benign}
    split = _Split(root, AblationConfig())
    validation = {shown for _, shown in [*split.val_harmful, *split.val_benign]}
    assert not drawn & validation
    held = held_out_sets(root, AblationConfig())
    shown = set()
    for data in held:
        for item in data.items:
            shown |= {item.text, item.request(), phrase_of(item.request()), *map(str, item.meta.values())}
    assert not drawn & shown
    assert len(set(asked.benign_typo) & set(asked.benign_steps)) == 0  # benign styles draw different requests


def _variants_copy(folder: Path, edit: Any = None) -> Path:
    """A copy of the committed variants in ``folder``, its manifest changed by ``edit(manifest)`` if given."""
    copy = folder / "variants"
    shutil.copytree(VARIANTS_DIR, copy)
    if edit is not None:
        manifest = json.loads((copy / "manifest.json").read_text())
        edit(manifest)
        (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_a_variant_whose_delta_differs_from_its_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown checkpoint 'W'"):
        load_variant("W")
    copy = _variants_copy(tmp_path)
    data = bytearray((copy / "v_safe.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "v_safe.safetensors").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="differs from its manifest"):
        load_variant("V_safe", copy)
    copy = _variants_copy(tmp_path / "again", lambda m: m["files"].pop("v_joint", None))  # (v30's hold none)
    with pytest.raises(ManifestError, match="lists no V_joint delta"):
        load_variant("V_joint", copy)


def test_variants_built_on_another_organism_are_refused(tmp_path: Path) -> None:
    copy = _variants_copy(tmp_path, lambda m: m["key"].update(organism="0" * 64))  # tuned on another stage V
    with pytest.raises(ManifestError, match="built on the organism whose stage V is 000000000000"):
        load_variant("P_safe", copy)


def test_a_comparison_checks_every_variant_before_evaluating_anything(tmp_path: Path) -> None:
    from lensiar.comparison import CompareConfig, run_comparison

    copy = _variants_copy(tmp_path, lambda m: m["files"].pop("v_joint", None))  # V_joint not built (as for v30)
    with pytest.raises(ManifestError, match="lists no V_joint delta; build it with `lensiar organism variants"):
        run_comparison(out=tmp_path / "out", work=tmp_path / "work", config=CompareConfig(variants=str(copy)))
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()  # nothing started


def test_settings_name_every_checkpoint_and_merge_with_its_formula() -> None:
    rows = settings(CompareConfig(linear=(0.5,), task_arithmetic=(1.0,), layer_lambdas=(2.0,)))
    assert [r.name for r in rows] == ["P", "V", "V_safe", "P_safe", "V_joint", "linear 0.5", "task arithmetic 1",
                                      "task arithmetic 2, layers"]
    assert rows[5].describe() == "(1 - 0.5) V + 0.5 V_safe"
    assert rows[6].describe() == "P + tau_V + 1 tau_safe"
    assert rows[7].restricted and "layers" in rows[7].describe()


def test_the_verdicts_follow_the_rows_and_need_a_significant_difference() -> None:
    joint = _row("V_joint", "checkpoint", 0.05, 0.40, 0.50)
    v = {**_row("V", "checkpoint", 0.50, 0.5, 0.2), "text_asr": {"rate": 0.125, "n": 32}}
    table = [_row("P", "checkpoint", 0.0, 0.0, 0.1), v, _row("V_safe", "checkpoint", 0.0, 0.45, 0.1), joint,
             _row("linear 0.5", "linear", 0.05, 0.80, 0.2), _row("linear 0.25", "linear", 0.05, 0.45, 0.45),
             _row("task arithmetic 1", "task_arithmetic", 0.05, 0.3, 0.1)]
    assert over_refusal(_row("x", "linear", 0, 0, 0.1, 0.4)) == 0.4
    assert dominates(table[4], joint) and not dominates(joint, joint)
    assert not dominates(table[5], joint)  # better on every point estimate, but by less than noise at n = 32
    assert not dominates(table[6], joint)  # less helpful
    f = findings(table)
    assert f["adaptation_erodes_safety"]["holds"] and f["adaptation_erodes_safety"]["p"] < 0.05  # 50% vs 12.5%
    assert f["joint_over_refuses"]["holds"] and f["joint_over_refuses"]["measure"] == "xstest_over_refusal"
    assert f["merge_dominates_joint"] == {"holds": True, "dominating_merges": ["linear 0.5"]}
    assert f["merge_keeps_safety_and_help"] == {"holds": True, "merges": ["linear 0.5"]}
    table[1] = {**v, "text_asr": {"rate": 0.375, "n": 32}}  # 50% vs 37.5%: not significant
    assert not findings(table)["adaptation_erodes_safety"]["holds"]


@pytest.mark.skipif(not RESULTS.is_file(), reason="no committed comparison")
def test_the_committed_comparison_agrees_with_its_own_rows() -> None:
    result = json.loads(RESULTS.read_text())
    names = [r["setting"] for r in result["rows"]]
    assert names[:5] == ["P", "V", "V_safe", "P_safe", "V_joint"] and any(n.startswith("IAR:") for n in names)
    assert result["findings"] == findings(result["rows"])
    assert all(r["image_asr"]["n"] == 2 * result["config"]["n_eval"] for r in result["rows"])
    for name in names:
        if not name.startswith("IAR:"):  # sampled answers for every generated row
            assert result["sampled_answers"][name]
    # V is the ablation's unrevised model on the same sets, judge, seed and budget: its row must be the same,
    # where both measured the same organism (results before recipe v30's ablation name none)
    ablation = json.loads((RESULTS.parent / "iar_ablation.json").read_text())
    if result.get("organism") != ablation.get("organism"):
        pytest.skip(f"the committed comparison measured organism {result.get('organism') or 'v29 (unnamed)'}, the "
                    f"ablation {ablation.get('organism')}: rerun `lensiar compare` to compare them")
    unrevised = next(r for r in ablation["rows"] if r["cell"] == "unrevised")
    v = result["rows"][names.index("V")]
    for key in ("image_asr", "benign_image_helpfulness", "xstest_over_refusal", "benign_image_over_refusal"):
        assert v[key] == unrevised[key], key


@pytest.mark.skipif(not RESULTS.is_file(), reason="no committed comparison")
def test_the_docs_table_is_the_committed_comparison() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "adaptation.md").read_text()
    block = doc.split("<!-- comparison-table")[1].split("<!-- end comparison-table -->")[0]
    quoted = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| setting")]
    pct = lambda c: "-" if c is None else f"{100 * c['rate']:.0f}%"  # noqa: E731
    rows = json.loads(RESULTS.read_text())["rows"]
    assert quoted == [f"| {r['setting']} | {pct(r['image_asr'])} | {pct(r['image_refused'])} | {pct(r['text_asr'])} | "
                      f"{pct(r['benign_image_helpfulness'])} | {pct(r['xstest_over_refusal'])} | "
                      f"{pct(r['benign_image_over_refusal'])} |" for r in rows]


@pytest.mark.skipif(not RESULTS.is_file(), reason="no committed comparison")
@pytest.mark.parametrize(("doc", "names"), [
    ("README.md", {"V": "V", "V_safe": "V_safe", "V_joint": "V_joint", "linear merge 0.5": "linear 0.5"}),
    ("docs/concepts.md", {"V": "V", "V_safe": "V_safe", "V_joint": "V_joint",
                          "best merge by ASR (task arithmetic 1.5)": "task arithmetic 1.5",
                          "IAR chosen cell": "IAR: single_response/mms/layer/gated"}),
])
def test_short_comparison_tables_quote_the_committed_rows(doc: str, names: dict[str, str]) -> None:
    text = (Path(__file__).parents[1] / doc).read_text()
    block = text.split("| setting | image ASR | harmful images refused | benign image help | XSTest over-refusal |")[1]
    rows = {r["setting"]: r for r in json.loads(RESULTS.read_text())["rows"]}
    quoted = [line for line in block.split("\n\n")[0].splitlines()[2:] if line.startswith("| ")]
    assert len(quoted) == len(names)
    pct = lambda c: "-" if c is None else f"{100 * c['rate']:.0f}%"  # noqa: E731
    for line in quoted:
        label, *values = [c.strip() for c in line.strip("|").split("|")]
        r = rows[names[label]]
        assert values == [pct(r["image_asr"]), pct(r["image_refused"]), pct(r["benign_image_helpfulness"]),
                          pct(r["xstest_over_refusal"])], label
    if doc == "docs/concepts.md":  # the best merge by ASR is what the label says
        merges = [r for r in rows.values() if r["kind"] in ("linear", "task_arithmetic")]
        best = min(merges, key=lambda r: (r["image_asr"]["rate"], -r["benign_image_helpfulness"]["rate"]))
        assert best["setting"] == "task arithmetic 1.5"


def test_a_quick_variant_build_writes_a_verified_delta_and_its_environment(tmp_path: Path) -> None:
    from lensiar.organism.environment import build_environment
    from lensiar.organism.files import sha256
    from lensiar.organism.safety import build_variants

    info = build_variants(tmp_path, quick=True, which=("P_safe",), log=lambda _: None)
    entry = info["files"]["p_safe"]
    assert sha256(tmp_path / entry["file"]) == entry["sha256"]
    assert info["environments"]["P_safe"]["packages"] == build_environment()["packages"]
    again = build_variants(tmp_path, quick=True, which=("P_safe",), log=lambda _: None)  # finished: skipped
    assert again["files"] == info["files"] and again["seconds"] == info["seconds"]


def test_the_iar_row_comes_only_from_an_ablation_of_the_same_organism(tmp_path: Path) -> None:
    row = {"cell": "modality/mms/head/gated", "image_asr": {"rate": 0.1, "n": 32},
           "benign_image_helpfulness": {"rate": 0.5, "n": 32}}
    worse = {**row, "cell": "query/mms/head/gated", "image_asr": {"rate": 0.2, "n": 32}}
    path = tmp_path / "iar_ablation.json"
    mine = {"recipe": 30, "stage_v_sha256": "fd7633dfae01"}
    path.write_text(json.dumps({"organism": mine, "rows": [{"cell": "unrevised"}, worse, row]}))
    assert best_iar_row(path, mine) == row
    assert best_iar_row(path, {"recipe": 29, "stage_v_sha256": "0123456789ab"}) is None
    path.write_text(json.dumps({"rows": [row]}))  # results from before organisms were named
    assert best_iar_row(path, mine) == row
