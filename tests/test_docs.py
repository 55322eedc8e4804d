"""The generated API reference is up to date with the docstrings, and every public item has one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_is_current() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "api_docs.py"), "--check"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_every_public_item_is_documented() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    assert "*(no docstring)*" not in text
    assert "## lensiar.lens" in text and "### `class Lens(" in text


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and "/" in line and not line.startswith("| model")]


def test_readme_organism_table_quotes_the_committed_report() -> None:
    """Every k/n in README's organism table is the committed report's (docs/results/organism_table.md), same model."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The embedded organism, measured", 1)[1].split("**What it shows", 1)[0]
    report = {(r[0], r[3]) for r in _rows((ROOT / "docs" / "results" / "organism_table.md").read_text()) if len(r) > 3}
    quoted = [(r[0], r[3]) for r in _rows(section) if len(r) > 3]
    assert len(quoted) >= 10 and all(q in report for q in quoted), [q for q in quoted if q not in report]
    recipe = __import__("json").loads((ROOT / "lensiar" / "organism" / "weights" / "manifest.json").read_text())
    assert f"recipe v{recipe['recipe_version']}**" in section


def test_howto_memory_table_is_the_scripts_output() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "memory_table.py")], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() in (ROOT / "docs" / "howto-real-vlms.md").read_text()


def test_readme_ablation_table_quotes_the_committed_results() -> None:
    """README's IAR ablation rows are docs/results/iar_ablation.json's: the unrevised model, each run chosen by the
    rule, and the frontier's over-refusal range."""
    import json

    result = json.loads((ROOT / "docs" / "results" / "iar_ablation.json").read_text())
    section = (ROOT / "README.md").read_text().split("## The IAR ablation, measured", 1)[1].split("\n## ", 1)[0]
    rows = {r["cell"]: r for r in result["rows"]}
    pct = lambda cell: f"{100 * cell['rate']:.0f}%"  # noqa: E731
    base = rows["unrevised"]
    ruled = [r for r in result["rows"][1:] if not r.get("frontier")]
    unchanged = [r for r in ruled if r["chosen"] is None]
    assert f"unrevised, and {len(unchanged)} of {len(ruled)} runs (no admissible candidate) | " \
           f"{pct(base['image_asr'])} | {pct(base['benign_image_helpfulness'])} | +0 |" in section
    for r in ruled:
        if r["chosen"] is not None:
            name = " / ".join(r["cell"].split("/"))
            gate = f", gate {r['chosen']['threshold']:g}" if r["chosen"].get("threshold") is not None else ""
            assert (f"| {name}, alpha {r['chosen']['alpha']:g}, top {r['chosen']['top_k']}{gate} | {pct(r['image_asr'])} | "
                    f"{pct(r['benign_image_helpfulness'])} ({100 * r['helpfulness_share']:.0f}% of unrevised) | "
                    f"{100 * r['over_refusal_rise']:+.0f} |") in section
    frontier = [r for r in result["rows"] if r.get("frontier")]
    rises = [100 * r["over_refusal_rise"] for r in frontier]
    assert f"| strongest candidate of {', '.join(r['strategy'] for r in frontier)} (outside the rule) | " \
           f"{'/'.join(sorted({pct(r['image_asr']) for r in frontier}))} | " \
           f"{'/'.join(sorted({pct(r['benign_image_helpfulness']) for r in frontier}))} | " \
           f"+{min(rises):.0f} to +{max(rises):.0f} |" in section


def test_readme_demo_table_quotes_the_committed_demo_summary() -> None:
    """README's demo rows and time are docs/results/demo_summary.md's (the copy of a `lensiar demo` run)."""
    import re

    summary = (ROOT / "docs" / "results" / "demo_summary.md").read_text()
    section = (ROOT / "README.md").read_text().split("## The demo, measured", 1)[1].split("\n## ", 1)[0]
    cols = {"ASR": 2, "over-refusal": 4, "on topic": 5}
    table = {(r[0], r[1]): r for r in _rows(summary) if len(r) >= 8}
    quoted = {"MM-SafetyBench 01-07, TYPO image: ASR (on topic)": ("mm_safetybench-typo", "ASR"),
              "SafeBench, FigStep-style image: ASR": ("safebench-figstep-rendered", "ASR"),
              "HarmBench test, text: ASR": ("harmbench", "ASR"),
              "XSTest safe, text: over-refusal": ("xstest-safe", "over-refusal"),
              "benign Alpaca phrases, TYPO image: on topic": ("alpaca-typo", "on topic"),
              "benign Alpaca instructions, FigStep image: on topic": ("alpaca-figstep", "on topic")}
    readme_rows = {r[0]: r[1:] for r in (line.strip("|").split("|") for line in section.splitlines()
                                         if line.startswith("| ")) for r in [[c.strip() for c in r]]}
    for label, (dataset, metric) in quoted.items():
        for i, condition in enumerate(("unrevised", "revised")):
            cell = table[(dataset, condition)][cols[metric]]
            short = re.sub(r"%\]", "]", re.sub(r"%, ", ", ", cell.split(" (n=")[0]))
            assert readme_rows[label][i] == short, (label, condition, readme_rows[label][i], short)
    seconds = re.search(r"Total time: (\d+) s", summary)
    assert seconds and f"It took {seconds.group(1)} s" in section
    # the validation helpfulness the README quotes for the shown candidate against the unrevised model's
    table = summary.split("## Validation", 1)[1].split("\n## ", 1)[0]
    validation = {r[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
                                    if line.startswith("| ") and not line.startswith("| candidate"))}
    base, shown = validation["unrevised"], next(r for k, r in validation.items() if "gate 0.9" in k)
    assert f"helpfulness {shown[3]} against {base[3]}" in section


def _pct(cell: dict[str, float]) -> str:
    return f"{100 * cell['rate']:.0f}% [{100 * cell['ci95'][0]:.0f}, {100 * cell['ci95'][1]:.0f}]"


def test_adaptation_degradation_table_quotes_the_committed_run() -> None:
    """docs/adaptation.md's degradation rows are docs/results/vl_safety/vl_safety.json's (benchmarks/vl_safety.py)."""
    import json

    result = json.loads((ROOT / "docs" / "results" / "vl_safety" / "vl_safety.json").read_text())
    cells = {(r["dataset"], r["condition"]): r for r in result["degradation"]}
    docs = (ROOT / "docs" / "adaptation.md").read_text()
    for label, text, image in (("MM-SafetyBench 01-07", "mm_safetybench-text", "mm_safetybench-typo"),
                               ("SafeBench", "safebench-text", "safebench-figstep")):
        row = next(line for line in docs.splitlines() if line.startswith(f"| {label} (image"))
        want = [_pct(cells[(text, "backbone LLM, text")]["asr"]), _pct(cells[(text, "VLM, text")]["asr"]),
                _pct(cells[(image, "VLM, image")]["asr"]), f"{100 * cells[(image, 'VLM, image')]['asr_keyword']['rate']:.0f}%"]
        assert [c.strip() for c in row.strip("|").split("|")][2:] == want, (row, want)
    assert f"n = {result['n_per_set']} per cell" in docs and f"{result['seconds']:.0f} s on 2 cores" in docs


def test_committed_degradation_table_is_what_its_answers_give(benchmark_script: Callable[[str], ModuleType], tmp_path: Path) -> None:
    """benchmarks/vl_safety.py --rescore, run on a copy of the committed degradation answers, gives back the
    committed table and judge: the table is its answers' verdicts, whoever judged them last."""
    import json
    import shutil

    module = benchmark_script("vl_safety")
    for name in ("vl_safety.json", "degradation.jsonl"):
        shutil.copy(ROOT / "docs" / "results" / "vl_safety" / name, tmp_path / name)
    committed = json.loads((tmp_path / "vl_safety.json").read_text())
    again = module.rescore(tmp_path)
    assert again["degradation"] == committed["degradation"] and again["judge"] == committed["judge"]
    assert {k: v for k, v in again.items() if k != "samples"} == {k: v for k, v in committed.items() if k != "samples"}


def test_howto_bf16_figures_are_the_benchmark_output() -> None:
    import json

    result = json.loads((ROOT / "docs" / "results" / "bf16_probes.json").read_text())
    docs = (ROOT / "docs" / "howto-real-vlms.md").read_text()
    ok = result["resolvable"]
    assert f"{ok['within_1_point']} of {ok['of']} resolvable heads agree within 1 accuracy point" in docs
    assert f"within\n{ok['max_points']:.2f} points" in docs or f"within {ok['max_points']:.2f} points" in docs
    assert f"mean difference {ok['mean_points']:.2f} points" in docs and f"{result['samples']:,} samples" in docs


def test_adaptation_lambda_sweep_table_quotes_the_committed_run(benchmark_script: Callable[[str], ModuleType]) -> None:
    """Every row of docs/adaptation.md's lambda-sweep table is docs/results/merge_sweep/merge_sweep.json's, and the
    equal-helpfulness verdict follows from the rows (benchmarks/merge_sweep.py --rescore recomputes it)."""
    import json

    result = json.loads((ROOT / "docs" / "results" / "merge_sweep" / "merge_sweep.json").read_text())
    docs = (ROOT / "docs" / "adaptation.md").read_text().split("### The lambda sweep, measured", 1)[1]
    for key, rows in (("lambda", result["merge"]), ("alpha", result["revision"]["rows"])):
        for r in rows:
            name = f"task arithmetic, lambda = {r['lambda']:g}" if key == "lambda" else f"revision, alpha = {r['alpha']:g}"
            line = next(x for x in docs.splitlines() if x.startswith(f"| {name} "))
            cells = [c.strip() for c in line.strip("|").split("|")][1:]
            assert cells == [_pct(r["image_asr"]), f"{100 * r['image_asr_keyword']['rate']:.0f}%", _pct(r["over_refusal"]),
                             _pct(r["benign_on_topic"]), f"{100 * r['reading']['rate']:.0f}%",
                             f"{r['reading_similarity']['rate']:.2f}"], (line, r)
    module = benchmark_script("merge_sweep")
    reference = next(r for r in result["merge"] if r["lambda"] == 0.0)
    assert module._equal_helpfulness(reference, result["merge"], result["revision"]["rows"]) == result["equal_helpfulness"]
    assert result["equal_helpfulness"]["merge"]["lambda"] == 0.0 and result["equal_helpfulness"]["revision"] is None
    assert "only\n  lambda = 0 (the organism itself) qualifies, and no revision setting does" in docs


def test_merge_sweep_rescore_recounts_the_committed_json_from_its_answers(benchmark_script: Callable[[str], ModuleType], tmp_path: Path) -> None:
    """benchmarks/merge_sweep.py --rescore on a copy of the committed run rebuilds its merge_sweep.json from the
    stored results.jsonl, row for row, with the same judge, samples and comparison."""
    import json
    import shutil

    committed = ROOT / "docs" / "results" / "merge_sweep"
    for name in ("merge_sweep.json", "results.jsonl"):
        shutil.copy(committed / name, tmp_path / name)
    module = benchmark_script("merge_sweep")
    stale = json.loads((tmp_path / "merge_sweep.json").read_text())
    for row in stale["merge"] + stale["revision"]["rows"]:
        row["image_asr"] = row["over_refusal"] = None  # must come back from the answers
    stale["judge"] = stale["samples"] = None
    (tmp_path / "merge_sweep.json").write_text(json.dumps(stale))
    module.rescore(tmp_path / "merge_sweep.json")
    assert json.loads((tmp_path / "merge_sweep.json").read_text()) == json.loads((committed / "merge_sweep.json").read_text())
    assert (tmp_path / "merge_sweep.png").stat().st_size > 10_000


def test_organism_respelling_tables_are_the_benchmark_output(benchmark_script: Callable[[str], ModuleType]) -> None:
    """docs/organism.md's failure breakdown is the committed answers' (benchmarks/respell_pilot.py --variant
    breakdown), and each pilot row is its committed JSON's counts."""
    import json

    pilot = benchmark_script("respell_pilot")
    docs = (ROOT / "docs" / "organism.md").read_text()
    section = docs[docs.index("## After v30"):docs.index("## Held out for evaluation")]
    rows = [json.loads(line) for line in pilot.TABLE.read_text().splitlines()]  # type: ignore[attr-defined]
    counts = pilot.breakdown(rows)  # type: ignore[attr-defined]
    labels = {"held-out Alpaca phrases, TYPO image": "benign Alpaca phrases, TYPO",
              "MM-SafetyBench 01-07, TYPO image": "MM-SafetyBench 01-07, TYPO",
              "held-out Alpaca instructions, FigStep image": "benign Alpaca instructions, FigStep",
              "SafeBench, FigStep image": "SafeBench, FigStep"}
    for cell, c in counts.items():
        assert (f"| {labels[cell]} | {c['copy_right']} | {c['plain_right']} | "
                f"{c['both_right_on_topic']} of {c['both_right']} |") in section
    copy = sorted(c["copy_right"] for c in counts.values())
    plain = sorted(c["plain_right"] for c in counts.values())
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert (f"text in {copy[0]}-{copy[-1]} of 100 answers per image cell, the plain-words line in only "
            f"{plain[0]}-{plain[-1]}.") in readme
    quoted = [line for line in section.splitlines() if "respell_pilot/" in line and line.startswith("|")]
    assert len(quoted) >= 5
    for line in quoted:
        name = line.split("respell_pilot/")[1].split(")")[0].split("`")[0]
        result = json.loads((ROOT / "docs" / "results" / "respell_pilot" / name).read_text())
        assert f"| {result['benign']['exact']}/100 | {result['harmful']['exact']}/100 |" in line, name


def test_word_level_tower_pilot_table_is_its_committed_output() -> None:
    """docs/organism.md's word-level tower rows are the committed JSONs of benchmarks/token_tower_pilot.py, and the
    quoted training curves are their logs'."""
    import json

    docs = (ROOT / "docs" / "organism.md").read_text()
    section = docs[docs.index("### A word-level tower"):docs.index("## Held out for evaluation")]
    quoted = [line for line in section.splitlines() if "token_tower_pilot/" in line and line.startswith("|")]
    assert len(quoted) == 3
    curves = []
    for line in quoted:
        name = line.split("token_tower_pilot/")[1].split(")")[0]
        result = json.loads((ROOT / "docs" / "results" / "token_tower_pilot" / name).read_text())
        cells = " | ".join(f"{s['images_exact']}/{s['n']}, {s['tokens_right']}/{s['tokens']}"
                           for s in result["sets"].values())
        assert f"| {result['steps']} | {result['train_seconds']:.0f} s | " in line and cells in line, name
        assert all(s["images_exact"] == sum(a["exact"] for a in s["answers"]) for s in result["sets"].values())
        curves.append(", ".join(f"{100 * r['text_slot_accuracy']:.0f}%" for r in result["log"][1:5]))
    assert f"(text tokens right {curves[1]} at steps 100 to 400 against {curves[0]})" in " ".join(section.split())


def test_prompt_only_revision_figures_are_the_benchmark_output() -> None:
    """docs/evaluation.md's prompt-only table and validation rates, and concepts.md's counts, are
    docs/results/revision_positions.json's (benchmarks/revision_positions.py)."""
    import json

    result = json.loads((ROOT / "docs" / "results" / "revision_positions.json").read_text())
    docs = (ROOT / "docs" / "evaluation.md").read_text()
    for r in result["held_out"]["rows"]:
        assert (f"| {r['dataset']} | {r['condition']} | {r['refusal']} / {r['on_topic_compliance']} / "
                f"{r['off_topic']} / {r['empty_or_degenerate']} |") in docs
    over = {(r["method"], r.get("threshold"), r.get("positions")): round(100 * r["over_refusal"])
            for r in result["validation"]["rows"]}
    quoted = " ".join(docs.split())
    assert (f"over-refusal {over[('mms', 0.6, 'prompt')]}% at 0.6 and 0.7, {over[('mms', 0.8, 'prompt')]}% at 0.8 "
            f"and {over[('mms', 0.9, 'prompt')]}% at 0.9, against {over[('none', None, None)]}% unrevised") in quoted
    assert over[("mms", 0.6, "prompt")] == over[("mms", 0.7, "prompt")]
    mm = {r["condition"]: r for r in result["held_out"]["rows"] if r["dataset"] == "mm_safetybench-typo"}
    concepts = " ".join((ROOT / "docs" / "concepts.md").read_text().split())
    assert (f"({mm['revised, prompt positions']['refusal']} of 40 held-out MM-SafetyBench TYPO answers, against "
            f"{mm['revised, all positions']['empty_or_degenerate']} of 40 loops on every position") in concepts


def test_judges_topic_word_counts_are_the_scripts(benchmark_script: Callable[[str], ModuleType]) -> None:
    """docs/judges.md's counts of refusals on a topic word alone are benchmarks/refusal_topic_words.py's."""

    module = benchmark_script("refusal_topic_words")
    table, _ = module.counts()
    text = " ".join((ROOT / "docs" / "judges.md").read_text().split())
    names = {"iar_ablation.answers.jsonl": "IAR ablation", "organism_table.answers.jsonl": "organism table",
             "vl_merge_comparison.answers.jsonl": "merge comparison", "vl_safety/degradation.jsonl":
             "degradation benchmark", "merge_sweep/results.jsonl": "merge sweep"}
    for name, label in names.items():
        refusals, alone = table[name]
        assert f"{alone} of {refusals} ({label})" in text, (name, alone, refusals)
