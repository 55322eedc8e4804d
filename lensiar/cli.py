"""The ``lensiar`` command. Every subcommand prints machine-readable JSON on stdout (``--help`` for options)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lensiar.atomic import atomic_json, atomic_text, atomic_write

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (ASCII digits only)."""
    if not text.strip().isascii() or not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def _non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0 (ASCII digits only)."""
    if not text.strip().isascii() or not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return int(text)


def _lambdas(text: str) -> tuple[float, ...]:
    """An argparse type: comma-separated finite numbers, at least one."""
    values = tuple(_finite_float(v.strip()) for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"give at least one number, got {text!r}")
    return values


def _thresholds(text: str) -> tuple[float, ...]:
    """An argparse type: comma-separated probabilities strictly between 0 and 1 (``0.5,0.9``)."""
    values = tuple(_finite_float(t.strip()) for t in text.split(",") if t.strip())
    if not values or not all(0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated probabilities strictly between 0 and 1, got {text!r}")
    return values


def _finite_float(text: str) -> float:
    """An argparse type: a finite real number (no nan, no inf)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _quiet() -> None:
    import warnings

    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def cmd_spec(args: argparse.Namespace) -> dict[str, Any]:
    from lensiar import Lens

    return Lens.from_pretrained(args.model).spec.to_dict()


def cmd_capture(args: argparse.Namespace) -> dict[str, Any]:
    from safetensors.torch import save_file

    from lensiar import Lens, Prompt

    lens = Lens.from_pretrained(args.model)
    images = [_open_image(p) for p in args.image] if args.image else None
    prompts = [Prompt(t, images=images) for t in args.prompt]
    cache = lens.run_with_cache(prompts, args.names, positions=args.positions, progress=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: save_file({k: v.contiguous() for k, v in cache.items()}, tmp,
                                            metadata={"positions": str(args.positions)}))
    return {"out": str(out), "shapes": {k: list(v.shape) for k, v in cache.items()}}


def _samples(args: argparse.Namespace) -> Any:
    from lensiar import build_samples

    return build_samples(args.strategy, n=args.n, n_responses=args.n_responses, data_dir=args.data_dir,
                         seed=args.seed)


def cmd_probe(args: argparse.Namespace) -> dict[str, Any]:
    from lensiar import Lens, probe_heads

    lens = Lens.from_pretrained(args.model)
    result = probe_heads(lens, _samples(args), val_fraction=args.val_fraction, seed=args.seed)
    top = [{"layer": layer, "head": head, "log_loss": round(float(result.loss[layer, head]), 5),
            "accuracy": round(float(result.accuracy[layer, head]), 4)} for layer, head in result.top(args.top_k)]
    out: dict[str, Any] = {"model": args.model, "strategy": args.strategy, "seed": args.seed,
                           "n_train": len(result.train_ids), "n_val": len(result.val_ids),
                           "ranked_by": f"{result.ranked_by()} (nats per sample, lower first)", "top_heads": top,
                           "layer_accuracy": [round(float(a), 4) for a in result.layer_accuracy],
                           "layer_log_loss": [round(float(a), 5) for a in result.layer_loss]}
    if args.out:
        out["accuracy"], out["log_loss"] = result.accuracy.tolist(), result.loss.tolist()
        atomic_json(args.out, out)
        out = {k: v for k, v in out.items() if k not in ("accuracy", "log_loss")} | {"out": args.out}
    return out


def cmd_extract(args: argparse.Namespace) -> dict[str, Any]:
    from lensiar import Lens, extract
    from lensiar.store import VectorStore

    lens = Lens.from_pretrained(args.model)
    bundle = extract(lens, _samples(args), method=args.method, level=args.level, val_fraction=args.val_fraction,
                     seed=args.seed, gate=args.gate,
                     defaults={"alpha": args.alpha, "top_k": args.top_k})
    if args.out:
        path = bundle.save(args.out)
    else:
        path = VectorStore(args.store).save(args.name, bundle, overwrite=args.overwrite)
    chosen = bundle.selection()
    return {"bundle": str(path), "level": bundle.level, "method": bundle.method, "strategy": bundle.strategy,
            "counts": bundle.data["counts"], "selected": chosen.nonzero().tolist(),
            "selected_accuracy": [round(float(a), 4) for a in bundle.accuracy[chosen]]}


def _open_image(path: str) -> Any:
    from PIL import Image

    try:
        return Image.open(path).convert("RGB")
    except (OSError, ValueError) as exc:
        raise SystemExit(f"lensiar: cannot read image {path!r}: {exc}") from None


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    """The main job on the embedded organism (see :mod:`lensiar.demo`)."""
    from lensiar.demo import rescore, run_demo

    if args.rescore:
        summary = rescore(args.out)
        print(f"rescored {Path(args.out).resolve()}/summary.md (judge {summary['judge']})", file=sys.stderr)
        return {"report": str(Path(args.out) / "summary.md"), "judge": summary["judge"], "rescored": True}
    summary = run_demo(args.out, store=args.store, n_eval=args.n, seed=args.seed, tokens=args.max_new_tokens,
                       quick=args.quick, data=args.data_dir, log=lambda line: print(line, file=sys.stderr),
                       organism=args.organism)
    print("\n" + (Path(args.out) / "summary.md").read_text(), file=sys.stderr)
    print(f"report written to {Path(args.out).resolve()}/summary.md", file=sys.stderr)
    return {"report": str(Path(args.out) / "summary.md"), "chosen": summary.get("chosen"),
            "organism": summary["organism"], "seconds": summary["seconds"]}


def cmd_ablate(args: argparse.Namespace) -> dict[str, Any]:
    """The IAR grid on the organism (see :mod:`lensiar.ablation`)."""
    from lensiar.ablation import AblationConfig, run_ablation

    def picked(value: str | None, known: tuple[str, ...]) -> tuple[str, ...]:
        return known if value is None else tuple(v.strip() for v in value.split(",") if v.strip())

    from lensiar import ablation

    config = AblationConfig(n_train=args.n_train, n_val=args.n_val, n_eval=args.n, tokens=args.max_new_tokens,
                            seed=args.seed, strategies=picked(args.strategies, ablation.STRATEGIES),
                            methods=picked(args.methods, ablation.METHODS), levels=picked(args.levels, ablation.LEVELS),
                            variants=picked(args.variants, ablation.VARIANTS), positions=args.positions,
                            gate_thresholds=args.gate_thresholds or ablation.GATE_THRESHOLDS, judge=args.judge,
                            helpfulness=args.helpfulness)
    result = run_ablation(args.out, args.work, config, data=args.data_dir,
                          log=lambda line: print(line, file=sys.stderr), organism=args.organism)
    print("\n" + (Path(args.out) / "iar_ablation.md").read_text().split("## Sampled answers")[0], file=sys.stderr)
    best = [r for r in result["rows"] if r["meets_headline"]]
    return {"report": str(Path(args.out) / "iar_ablation.md"), "runs": len(result["rows"]) - 1,
            "meeting_headline": [r["cell"] for r in best]}


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    """The second paper's comparison on the organism (see :mod:`lensiar.comparison`)."""
    from lensiar.comparison import CompareConfig, run_comparison

    config = CompareConfig(n_eval=args.n, tokens=args.max_new_tokens, seed=args.seed, linear=args.linear,
                           task_arithmetic=args.task_arithmetic, layer_lambdas=args.layer_lambdas,
                           n_layers=args.n_layers, variants=args.variants,
                           only=tuple(v.strip() for v in (args.settings or "").split(",") if v.strip()))
    result = run_comparison(args.out, args.work, config, data=args.data_dir,
                            log=lambda line: print(line, file=sys.stderr), ablation=args.ablation)
    print("\n" + (Path(args.out) / "vl_merge_comparison.md").read_text().split("## Sampled answers")[0],
          file=sys.stderr)
    return {"report": str(Path(args.out) / "vl_merge_comparison.md"), "rows": len(result["rows"]),
            "findings": {k: v["holds"] for k, v in result["findings"].items()}}


def cmd_organism_build(args: argparse.Namespace) -> dict[str, Any]:
    from lensiar.organism.recipe import build

    seeds: dict[str, int] = {}
    for item in args.seed or []:
        name, _, value = item.partition("=")
        if not value.strip().lstrip("-").isdigit():
            raise ValueError(f"--seed takes NAME=INTEGER (e.g. stage_s=11), got {item!r}")
        seeds[name.strip()] = int(value)
    manifest = build(args.out, data=args.data_dir, quick=args.quick, seeds=seeds, reuse=args.reuse,
                     **({} if args.recipe is None else {"recipe": args.recipe}))
    return {"out": str(args.out), "build_seconds": manifest["build_seconds"], "files": manifest["files"],
            "reader": manifest["reader"]}


def cmd_organism_variants(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import replace

    from lensiar.organism.safety import SafetyMix, build_variants

    mix = SafetyMix()
    mix = replace(mix, epochs=args.epochs or mix.epochs, lr=args.lr or mix.lr, rank=args.rank or mix.rank)
    manifest = build_variants(args.out, data=args.data_dir, quick=args.quick, which=tuple(args.only or
                              ("V_safe", "P_safe", "V_joint")), mix=mix, log=lambda line: print(line, file=sys.stderr))
    return {"out": str(args.out), "seconds": manifest["seconds"], "files": manifest["files"]}


def cmd_organism_report(args: argparse.Namespace) -> dict[str, Any]:
    from lensiar.judges import judge_by_name
    from lensiar.organism import WEIGHTS
    from lensiar.organism.report import READ_TOKENS, markdown, run

    weights = Path(args.weights or WEIGHTS)
    if not (weights / "manifest.json").is_file():
        raise ValueError(f"--weights {weights}: no organism manifest.json there")
    judge = judge_by_name(args.judge, args.data_dir)
    table = run(weights, n=args.n, seed=args.seed, max_new_tokens=args.max_new_tokens,
                data=args.data_dir, read_tokens=args.read_tokens or READ_TOKENS, log=lambda line: print(line, file=sys.stderr),
                reading_only=args.reading_only, image_tokens=args.image_tokens, judge=judge)
    print(markdown(table), file=sys.stderr)
    answers = table.pop("answers")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        stem = out.with_suffix("")
        atomic_text(stem.with_suffix(".json"), json.dumps(table, indent=2) + "\n")
        atomic_text(stem.with_suffix(".md"), markdown(table) + "\n")
        atomic_text(stem.with_suffix(".answers.jsonl"), "".join(json.dumps(a) + "\n" for a in answers))
    return table


def cmd_organism_rejudge(args: argparse.Namespace) -> dict[str, Any]:
    from lensiar.judges import judge_by_name
    from lensiar.organism.report import markdown, rejudge

    stem = Path(args.table).with_suffix("")
    paths = {ext: stem.with_suffix(ext) for ext in (".json", ".answers.jsonl")}
    for path in paths.values():
        if not path.is_file():
            raise ValueError(f"no {path}: give the --out STEM of an earlier `lensiar organism report`")
    table = json.loads(paths[".json"].read_text())
    answers = [json.loads(line) for line in paths[".answers.jsonl"].read_text().splitlines() if line.strip()]
    fresh = rejudge(table, answers, judge_by_name(args.judge, args.data_dir))
    print(markdown(fresh), file=sys.stderr)
    atomic_text(paths[".json"], json.dumps(fresh, indent=2) + "\n")
    atomic_text(stem.with_suffix(".md"), markdown(fresh) + "\n")
    atomic_text(paths[".answers.jsonl"], "".join(json.dumps(a) + "\n" for a in answers))
    return {"table": str(paths[".json"]), "judge": fresh["judge"],
            "cells": [{k: c[k] for k in ("model", "inputs", "k", "n")} for c in fresh["cells"]]}


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    from lensiar import Lens
    from lensiar.bundle import RevisionBundle
    from lensiar.datasets import load_dataset, load_preset
    from lensiar.evaluate import Condition, run, set_aside, summarise

    lens = Lens.from_pretrained(args.model)
    datasets = []
    for spec in args.preset or []:
        name, _, variant = spec.partition(":")
        datasets.append(load_preset(name, args.data_dir, variant or None, args.image_dir).subset(args.n, args.seed))
    for path in args.file or []:
        datasets.append(load_dataset(path, text=args.text_column, image=args.image_column, image_dir=args.image_dir,
                                     harmful=not args.harmless).subset(args.n, args.seed))
    if not datasets:
        raise ValueError("give at least one --preset NAME[:VARIANT] or --file PATH")
    conditions = [Condition("plain", lens)]
    if args.bundle:
        bundles = tuple(RevisionBundle.load(b, lens=lens) for b in args.bundle)
        conditions.append(Condition("revised", lens, bundles, args.alpha, args.top_k, args.gate,
                                    positions=args.positions))
    from lensiar.judges import judge_by_name

    judge = judge_by_name(args.judge, args.data_dir)
    moved = set_aside(args.out) if args.fresh else None  # after every argument is checked: a bad one moves nothing
    if moved is not None:
        print(f"--fresh: earlier results moved to {moved}", file=sys.stderr)
    records = run(conditions, datasets, args.out, judge=judge,
                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    return {"out": str(args.out), "records": len(records), **({"set_aside": str(moved)} if moved else {}),
            "summary": [r for r in summarise(records, seed=args.seed) if r["category"] == "all"]}


def cmd_rejudge(args: argparse.Namespace) -> dict[str, Any]:
    from lensiar.judges import judge_by_name
    from lensiar.rejudge import rejudge_results

    judge = judge_by_name(args.judge, args.data_dir)
    moves = rejudge_results(args.results, judge)
    changed = {f"{old} -> {new}": n for (old, new), n in sorted(moves.items()) if old != new}
    return {"results": args.results, "judge": judge.name, "records": sum(moves.values()),
            "changed": sum(changed.values()), "moves": changed}


def cmd_judge_agreement(args: argparse.Namespace) -> dict[str, Any]:
    from lensiar.calibration import agreement_table, load_labels, markdown
    from lensiar.judges import JUDGE_NAMES, judge_by_name

    names = [n.strip() for n in args.judges.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--judges needs at least one of {', '.join(JUDGE_NAMES)}")
    rows = load_labels(args.labels)
    table = agreement_table(rows, [judge_by_name(n, args.data_dir) for n in names])
    text = markdown(table, str(args.labels))
    print(text, file=sys.stderr)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_text(out.with_suffix(".md"), text + "\n")
        atomic_text(out.with_suffix(".json"), json.dumps(table, indent=2) + "\n")
    return {name: res["all"] for name, res in table["judges"].items()}


def cmd_store(args: argparse.Namespace) -> dict[str, Any]:
    from lensiar.store import VectorStore

    store = VectorStore(args.store)
    if args.store_command == "list":
        entries = store.list()
        return {"store": str(store.root), "bundles": {name: {k: e.get(k) for k in ("level", "method", "strategy",
                                                                                   "metrics", "saved_at")}
                                                      for name, e in entries.items()},
                "orphans": store.orphans()}
    bundle = store.load(args.name)
    if args.store_command == "show":
        chosen = bundle.selection()
        return {"name": args.name, "repr": repr(bundle), "metadata": bundle.metadata(),
                "selected": chosen.nonzero().tolist(),
                "selected_accuracy": [round(float(a), 4) for a in bundle.accuracy[chosen]]}
    from lensiar.export import export_control_vector

    path = export_control_vector(bundle, args.out, alpha=args.alpha, top_k=args.top_k)
    return {"name": args.name, "out": str(path)}


def cmd_revise(args: argparse.Namespace) -> dict[str, Any]:
    from lensiar import Lens, Prompt, RevisionBundle
    from lensiar.store import VectorStore

    images = [_open_image(p) for p in args.image] if args.image else None
    prompts = [Prompt(t, images=images) for t in args.prompt]
    lens = Lens.from_pretrained(args.model)
    source = Path(args.bundle)
    bundle = (RevisionBundle.load(source, lens=lens) if source.suffix == ".safetensors" or source.is_file()
              else VectorStore(args.store).load(args.bundle, lens=lens))
    plain = lens.generate(prompts, max_new_tokens=args.max_new_tokens)
    with lens.revise(bundle, alpha=args.alpha, top_k=args.top_k, gate=args.gate, positions=args.positions):
        revised = lens.generate(prompts, max_new_tokens=args.max_new_tokens)
    for prompt, a, b in zip(args.prompt, plain, revised, strict=True):
        print(f"prompt:    {prompt}\nunrevised: {a!r}\nrevised:   {b!r}\n", file=sys.stderr)
    return {"bundle": str(args.bundle), "alpha": args.alpha, "top_k": args.top_k, "gate": args.gate,
            "positions": args.positions, "answers": [{"prompt": p, "unrevised": a, "revised": b}
                        for p, a, b in zip(args.prompt, plain, revised, strict=True)]}


def cmd_merge(args: argparse.Namespace) -> dict[str, Any]:
    from lensiar.merge import merge

    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    return merge(args.base, args.safe, args.vl, args.out, args.lam, args.method, layers=layers,
                 overwrite=args.overwrite)


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from lensiar import Lens, RevisionBundle, build_samples, probe_heads
    from lensiar.data_sources import load_source
    from lensiar.prompts import phrase_of, typo_prompt
    from lensiar.render import TYPO_PROMPT, fits, render_phrase
    from lensiar.report import head_report

    lens = Lens.from_pretrained(args.model)
    harmful = [r.text for r in load_source("rd_harmful", args.data_dir, "train") if fits(phrase_of(r.text))]
    samples = build_samples("modality", harmful=harmful, n=args.n_probe, image=lambda t: render_phrase(phrase_of(t)),
                            image_prompt=TYPO_PROMPT, seed=args.seed)
    ranking = probe_heads(lens, samples, seed=args.seed)
    pairs = harmful[: args.n]
    bundle = RevisionBundle.load(args.bundle, lens=lens) if args.bundle else None
    paths = head_report(lens, args.out, pairs, [typo_prompt(t) for t in pairs], ranking, bundle, top_k=args.top_k)
    return {k: str(v) for k, v in paths.items()}


POSITIONS_HELP = ("where the revision acts: all (prompt and every generated token) or prompt (the prompt only; the "
                  "answer is generated unrevised from the revised prompt); default: the bundle's, else all")


def build_parser() -> argparse.ArgumentParser:
    from lensiar.judges import JUDGE_NAMES
    from lensiar.revision import POSITIONS

    parser = argparse.ArgumentParser(prog="lensiar", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the main job on the embedded default")
    demo.add_argument("--seed", type=_non_negative_int, default=0)
    demo.add_argument("--max-new-tokens", type=_positive_int, default=64,
                      help="new tokens per held-out answer (image answers read the image back before acting on it)")
    demo.add_argument("--n", type=_positive_int, default=40, help="held-out prompts per evaluation set")
    demo.add_argument("--out", default="reports/demo", help="report folder")
    demo.add_argument("--store", default="vector_store", help="vector store for the chosen bundle")
    demo.add_argument("--data-dir", default=None)
    demo.add_argument("--quick", action="store_true", help="tiny counts (a smoke run; numbers mean nothing)")
    demo.add_argument("--rescore", action="store_true",
                      help="no run: recount --out's summary from its results files (after `lensiar rejudge` on them)")
    demo.add_argument("--organism", default=None,
                      help="organism folder of a build (lensiar organism build --out DIR) instead of the committed one")
    demo.set_defaults(func=cmd_demo)

    ab = sub.add_parser("ablate", help="the IAR grid on the organism: strategy x method x level, unconditional and gated",
                        description="Runs query, single_response, multi_response and modality samples on image prompts "
                                    "x mms and probe x head and layer, each unconditional and gated; chooses alpha and "
                                    "top_k per run on validation (largest ASR drop with over-refusal up by at most 5 "
                                    "points and on-topic benign helpfulness kept at 95%) and measures held-out "
                                    "on-topic ASR, benign helpfulness and over-refusal. "
                                    "Resumable: rerun the same command to continue.")
    ab.add_argument("--out", default="docs/results", help="where iar_ablation.md/.json/.png go")
    ab.add_argument("--work", default="reports/ablate", help="work folder (bundles, gate, state): a rerun continues it")
    ab.add_argument("--n", type=_positive_int, default=16, help="held-out items per set")
    ab.add_argument("--n-train", type=_positive_int, default=32, help="train requests per strategy")
    ab.add_argument("--n-val", type=_positive_int, default=8, help="validation prompts per style and side")
    ab.add_argument("--max-new-tokens", type=_positive_int, default=48)
    ab.add_argument("--seed", type=_non_negative_int, default=0)
    ab.add_argument("--strategies", default=None, help="comma-separated subset (default: all four)")
    ab.add_argument("--methods", default=None, help="comma-separated subset of mms,probe")
    ab.add_argument("--levels", default=None, help="comma-separated subset of head,layer")
    ab.add_argument("--variants", default=None, help="comma-separated subset of unconditional,gated")
    ab.add_argument("--positions", choices=POSITIONS, default="prompt",
                    help="where every run's revision acts: prompt (the prompt only; default) or all (every generated "
                         "token too)")
    ab.add_argument("--gate-thresholds", type=_thresholds, default=None,
                    help="comma-separated gate probability thresholds that gated runs try (default: 0.9)")
    ab.add_argument("--judge", default="on_topic_lm", choices=list(JUDGE_NAMES),
                    help="judge of the validation and held-out answers (default: on_topic_lm)")
    ab.add_argument("--helpfulness", default="on_topic", choices=["on_topic", "in_words"],
                    help="what the choice rule's benign validation helpfulness counts: answers on topic and not "
                         "refused (default), or any answer in words (the rule of the runs before 2026-12-07)")
    ab.add_argument("--data-dir", default=None)
    ab.add_argument("--organism", default=None, help="organism folder of a build instead of the committed one")
    ab.set_defaults(func=cmd_ablate)

    cp = sub.add_parser("compare", help="safety tuning vs joint tuning vs merging on the organism (the second paper)",
                        description="Evaluates P, V, V_safe, P_safe and V_joint (lensiar organism variants), linear "
                                    "merges (1 - l) V + l V_safe, task arithmetic P + tau_V + l tau_safe (tau = model - "
                                    "P, tau_safe from P_safe) over all layers and over the layers VL adaptation changed "
                                    "most, on the IAR ablation's held-out sets, and adds the ablation's best cell. "
                                    "Resumable: rerun the same command to continue.")
    cp.add_argument("--out", default="docs/results", help="where vl_merge_comparison.md/.json/.png go")
    cp.add_argument("--work", default="reports/compare", help="work folder (checkpoints, state): a rerun continues it")
    cp.add_argument("--n", type=_positive_int, default=16, help="held-out items per set")
    cp.add_argument("--max-new-tokens", type=_positive_int, default=48)
    cp.add_argument("--seed", type=_non_negative_int, default=0)
    cp.add_argument("--linear", type=_lambdas, default="0.25,0.5,0.75", help="comma-separated lambdas of the linear merge")
    cp.add_argument("--task-arithmetic", type=_lambdas, default="0.5,1,1.5", help="comma-separated lambdas of task arithmetic")
    cp.add_argument("--layer-lambdas", type=_lambdas, default="1,2", help="lambdas of the layer-restricted task arithmetic")
    cp.add_argument("--n-layers", type=_positive_int, default=10, help="layers of the layer-restricted merge")
    cp.add_argument("--ablation", default=None, help="iar_ablation.json whose best cell joins the table "
                                                     "(default: OUT/iar_ablation.json)")
    cp.add_argument("--variants", default=None, help="folder of V_safe / P_safe / V_joint deltas (lensiar organism "
                                                     "variants --out DIR; default: the committed ones)")
    cp.add_argument("--settings", default=None, help="comma-separated settings to run, as named in the table "
                                                     "(e.g. 'V_safe,linear 0.5'; default: all)")
    cp.add_argument("--data-dir", default=None)
    cp.set_defaults(func=cmd_compare)

    spec = sub.add_parser("spec", help="print a model's spec (layers, heads, fingerprint)")
    spec.add_argument("model", help="registry name (organism, smollm2-135m-instruct), local checkpoint directory or hub id")
    spec.set_defaults(func=cmd_spec)

    cap = sub.add_parser("capture", help="capture hook values into a safetensors file")
    cap.add_argument("model")
    cap.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    cap.add_argument("--image", action="append", help="image file(s) given with every prompt")
    cap.add_argument("--names", nargs="+", default=["blocks.*.attn.hook_z"])
    cap.add_argument("--positions", default="last", choices=["last", "mean", "all", "image"])
    cap.add_argument("--out", required=True)
    cap.set_defaults(func=cmd_capture)

    def sample_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help="registry name, local checkpoint directory or hub id")
        p.add_argument("--strategy", default="query", choices=["query", "single_response", "multi_response", "modality"])
        p.add_argument("--n", type=_positive_int, default=128, help="harmful prompts (and as many harmless for query)")
        p.add_argument("--n-responses", type=_positive_int, default=4, help="responses per prompt for multi_response")
        p.add_argument("--data-dir", default=None, help="benchmark data directory (default ../shared/data)")
        p.add_argument("--val-fraction", type=float, default=0.25)
        p.add_argument("--seed", type=_non_negative_int, default=0)

    probe = sub.add_parser("probe", help="probe every head and layer; rank heads by held-out log-loss")
    sample_options(probe)
    probe.add_argument("--top-k", type=_positive_int, default=10)
    probe.add_argument("--out", help="also write the full accuracy and log-loss matrices to this JSON file")
    probe.set_defaults(func=cmd_probe)

    ext = sub.add_parser("extract", help="extract revision vectors into a bundle")
    sample_options(ext)
    ext.add_argument("--method", default="mms", choices=["mms", "probe", "pca"])
    ext.add_argument("--level", default="head", choices=["head", "layer"])
    ext.add_argument("--alpha", type=_finite_float, default=1.0, help="default alpha recorded in the bundle")
    ext.add_argument("--top-k", type=_positive_int, default=8, help="default top_k recorded in the bundle")
    ext.add_argument("--gate", action="store_true", help="store a conditional-revision gate (query strategy)")
    where = ext.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="bundle file (.safetensors)")
    where.add_argument("--name", help="save into the vector store under this name")
    ext.add_argument("--store", default="vector_store")
    ext.add_argument("--overwrite", action="store_true")
    ext.set_defaults(func=cmd_extract)

    ev = sub.add_parser("eval", help="generate, judge and summarise on benchmarks (resumable JSONL)")
    ev.add_argument("model", help="registry name (organism, smollm2-135m-instruct), local checkpoint directory or hub id")
    ev.add_argument("--preset", action="append", help="NAME[:VARIANT], e.g. safebench, xstest:safe, vlguard:unsafes")
    ev.add_argument("--file", action="append", help="a CSV/JSON/JSONL dataset (see --text-column)")
    ev.add_argument("--text-column", default="text")
    ev.add_argument("--image-column", default=None)
    ev.add_argument("--image-dir", default=None)
    ev.add_argument("--harmless", action="store_true", help="--file rows are harmless (measure over-refusal)")
    ev.add_argument("--bundle", action="append", help="revision bundle(s): adds a 'revised' condition")
    ev.add_argument("--alpha", type=_finite_float, default=None)
    ev.add_argument("--top-k", type=_positive_int, default=None)
    ev.add_argument("--gate", action="store_true")
    ev.add_argument("--positions", choices=POSITIONS, default=None, help=POSITIONS_HELP)
    ev.add_argument("--n", type=_positive_int, default=None, help="items per dataset (seeded subset)")
    ev.add_argument("--seed", type=_non_negative_int, default=0)
    ev.add_argument("--max-new-tokens", type=_positive_int, default=32)
    ev.add_argument("--judge", default="on_topic_lm", choices=list(JUDGE_NAMES),
                    help="outcome judge: on_topic_lm (default: the topic is a likelihood test under SmolLM2), on_topic "
                         "(word overlap), on_topic_readback (word overlap; a misread image read-back is off topic), "
                         "keyword (refusal keywords only) or llm (SmolLM2 picks the outcome)")
    ev.add_argument("--batch-size", type=_positive_int, default=8)
    ev.add_argument("--data-dir", default=None)
    ev.add_argument("--out", required=True, help="results JSONL (appended to; a rerun resumes)")
    ev.add_argument("--fresh", action="store_true",
                    help="start anew: an existing --out file is renamed to OUT.<UTC time>.bak first (nothing is lost)")
    ev.set_defaults(func=cmd_eval)

    st = sub.add_parser("store", help="the vector store: list bundles (and orphan files), show one, export GGUF")
    st.add_argument("--store", default="vector_store")
    st_sub = st.add_subparsers(dest="store_command", required=True)
    st_sub.add_parser("list", help="bundles, their metrics, and files no index entry names")
    show = st_sub.add_parser("show", help="one bundle's metadata and selected heads or layers")
    show.add_argument("name")
    gguf = st_sub.add_parser("export-gguf", help="a layer-level bundle as a llama.cpp control vector")
    gguf.add_argument("name")
    gguf.add_argument("--out", required=True, help="output .gguf file")
    gguf.add_argument("--alpha", type=_finite_float, default=None)
    gguf.add_argument("--top-k", type=_positive_int, default=None)
    st.set_defaults(func=cmd_store)

    rv = sub.add_parser("revise", help="answers without and with a revision, side by side")
    rv.add_argument("model", help="registry name (organism, smollm2-135m-instruct), local checkpoint directory or hub id")
    rv.add_argument("--bundle", required=True, help="a bundle file (.safetensors) or a name in --store")
    rv.add_argument("--store", default="vector_store")
    rv.add_argument("--prompt", action="append", required=True)
    rv.add_argument("--image", action="append", help="image file(s) given with every prompt")
    rv.add_argument("--alpha", type=_finite_float, default=None, help="default: the bundle's")
    rv.add_argument("--top-k", type=_positive_int, default=None, help="default: the bundle's")
    rv.add_argument("--gate", action="store_true", help="revise only what the bundle's gate flags")
    rv.add_argument("--positions", choices=POSITIONS, default=None, help=POSITIONS_HELP)
    rv.add_argument("--max-new-tokens", type=_positive_int, default=48)
    rv.set_defaults(func=cmd_revise)

    ja = sub.add_parser("judge-agreement", help="accuracy and Cohen's kappa of each judge against labelled answers")
    ja.add_argument("--labels", default=str(Path(__file__).resolve().parent.parent / "tests" / "data" /
                                            "judge_calibration.jsonl"), help="labelled pairs (JSONL)")
    ja.add_argument("--judges", default="keyword,on_topic,on_topic_readback,on_topic_lm,llm",
                    help=f"comma-separated: {', '.join(JUDGE_NAMES)}")
    ja.add_argument("--data-dir", default=None)
    ja.add_argument("--out", help="write STEM.md and STEM.json")
    ja.set_defaults(func=cmd_judge_agreement)

    rj = sub.add_parser("rejudge", help="judge a results file's stored answers again (no generation), in place")
    rj.add_argument("results", help="a results JSONL written by `lensiar eval` or a benchmark")
    rj.add_argument("--judge", default="on_topic_lm", choices=list(JUDGE_NAMES))
    rj.add_argument("--data-dir", default=None)
    rj.set_defaults(func=cmd_rejudge)

    mg = sub.add_parser(
        "merge", help="merge checkpoints: task arithmetic VL + lambda (SAFE - BASE), or linear (1 - lambda) VL + lambda SAFE",
        description="task_arithmetic: theta = theta_vl + lambda (theta_safe - theta_base); linear: theta = (1 - lambda) "
                    "theta_vl + lambda theta_safe. BASE must be a common parent of VL and SAFE whose difference VL "
                    "does not already hold. BASE and SAFE are either backbone LLMs (B before and S after safety tuning, "
                    "VL adapted from B: only VL's language backbone is merged) or VLMs of VL's layout (P, V_safe: every "
                    "tensor is merged, giving P + tau_V + lambda tau_safe). A VL adapted from S already holds S - B.")
    mg.add_argument("--base", required=True, help="the common parent: backbone LLM before safety tuning, or the parent "
                                                  "VLM P of VL and SAFE (safetensors folder)")
    mg.add_argument("--safe", required=True, help="backbone LLM after safety tuning, or the safety-tuned VLM V_safe")
    mg.add_argument("--vl", required=True, help="the model merged into (V); tensors BASE/SAFE lack are copied")
    mg.add_argument("--lambda", dest="lam", type=_finite_float, required=True)
    mg.add_argument("--method", default="task_arithmetic", choices=["task_arithmetic", "linear"])
    mg.add_argument("--layers", help="comma-separated decoder layers to merge (default: all)")
    mg.add_argument("--out", required=True)
    mg.add_argument("--overwrite", action="store_true")
    mg.set_defaults(func=cmd_merge)

    rep = sub.add_parser("report", help="head-attribution report (HTML + markdown + PNG) on text vs image requests")
    rep.add_argument("model", nargs="?", default="organism")
    rep.add_argument("--n", type=_positive_int, default=8, help="text/image pairs for attribution and patching")
    rep.add_argument("--n-probe", type=_positive_int, default=96, help="harmful prompts for the modality probes")
    rep.add_argument("--top-k", type=_positive_int, default=10)
    rep.add_argument("--bundle", default=None, help="a bundle whose metadata goes into the report")
    rep.add_argument("--seed", type=_non_negative_int, default=0)
    rep.add_argument("--data-dir", default=None)
    rep.add_argument("--out", default="reports/heads")
    rep.set_defaults(func=cmd_report)

    org = sub.add_parser("organism", help="build or evaluate the embedded model organism")
    org_sub = org.add_subparsers(dest="organism_command", required=True)
    ob = org_sub.add_parser("build", help="run the recipe (stage S, stage V) and write deltas + manifest")
    ob.add_argument("--out", default="lensiar/organism/weights")
    ob.add_argument("--data-dir", default=None)
    ob.add_argument("--quick", action="store_true", help="tiny counts: checks the recipe runs, not a usable organism")
    ob.add_argument("--recipe", type=int, default=None,
                    help="recipe version (default: the committed organism's; docs/organism.md lists each)")
    ob.add_argument("--seed", action="append", metavar="NAME=N",
                    help="override one of the recipe's seeds (data, stage_s, reader, stage_v); repeatable")
    ob.add_argument("--reuse", default=None, metavar="DIR",
                    help="take stage S and the vision tower from this finished organism folder where they are the "
                         "same computation (e.g. lensiar/organism/weights); the manifest lists them as resumed")
    ob.set_defaults(func=cmd_organism_build)
    ov = org_sub.add_parser("variants", help="build the safety-tuned checkpoints of the merge comparison: V_safe (V "
                            "tuned on multimodal safety data), P_safe (the parent P tuned on it), V_joint (stage V "
                            "with it mixed in from the start)")
    ov.add_argument("--out", default="lensiar/organism/weights/variants")
    ov.add_argument("--only", action="append", choices=["V_safe", "P_safe", "V_joint"],
                    help="build only this variant (repeatable; default: all three)")
    ov.add_argument("--data-dir", default=None)
    ov.add_argument("--quick", action="store_true", help="tiny counts: checks the build runs, not usable checkpoints")
    ov.add_argument("--epochs", type=_positive_int, default=None, help="epochs of the V_safe / P_safe tuning (default 1; V_joint follows stage V)")
    ov.add_argument("--lr", type=_finite_float, default=None, help="learning rate of the V_safe / P_safe tuning (default 1e-3)")
    ov.add_argument("--rank", type=_positive_int, default=None, help="LoRA rank of the V_safe / P_safe tuning (default 2)")
    ov.set_defaults(func=cmd_organism_variants)
    orep = org_sub.add_parser("report", help="behaviour table on held-out prompts (on-topic judge, Wilson CIs)")
    orep.add_argument("--weights", default=None, help="organism folder (default: the committed one)")
    orep.add_argument("--n", type=_positive_int, default=100, help="prompts per cell (HarmBench test uses all 159)")
    orep.add_argument("--seed", type=_non_negative_int, default=0)
    orep.add_argument("--max-new-tokens", type=_positive_int, default=48, help="new tokens per judged text answer")
    orep.add_argument("--image-tokens", type=_positive_int, default=64, help="new tokens per judged image answer")
    orep.add_argument("--judge", default="on_topic_lm", choices=list(JUDGE_NAMES),
                      help="outcome judge (default: on_topic_lm; keyword-only non-refusal is reported beside it)")
    orep.add_argument("--read-tokens", type=_positive_int, default=None,
                      help="new tokens per reading answer (default: lensiar.organism.report.READ_TOKENS, 64)")
    orep.add_argument("--data-dir", default=None)
    orep.add_argument("--reading-only", action="store_true",
                      help="only the reading cell and where its misses arise (a few minutes, not ten)")
    orep.add_argument("--out", help="also write the table as STEM.json, STEM.md and every answer as STEM.answers.jsonl")
    orep.set_defaults(func=cmd_organism_report)
    orj = org_sub.add_parser("rejudge", help="recount a saved report's judged cells with a judge, no generation")
    orj.add_argument("table", help="the --out STEM of `lensiar organism report` (STEM.json + STEM.answers.jsonl)")
    orj.add_argument("--judge", default="on_topic_lm", choices=list(JUDGE_NAMES))
    orj.add_argument("--data-dir", default=None)
    orj.set_defaults(func=cmd_organism_rejudge)
    return parser


#: what a user's mistake can raise (bad arguments, files, data); anything else is a bug and keeps its traceback
USER_ERRORS = (ValueError, KeyError, TypeError, OSError, RuntimeError)


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error prints one line on stderr and exits 2 (``--debug``: the traceback too)."""
    args = build_parser().parse_args(argv)
    _quiet()
    try:
        result = args.func(args)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        line = " ".join(_error_line(exc).split())
        print(f"lensiar {args.command}: error: {line}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
