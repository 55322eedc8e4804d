"""The ``lensiar`` command. Every subcommand prints machine-readable JSON on stdout (``--help`` for options)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in cache.items()}, tmp, metadata={"positions": str(args.positions)})
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"out": str(out), "shapes": {k: list(v.shape) for k, v in cache.items()}}


def _samples(args: argparse.Namespace) -> Any:
    from lensiar import build_samples

    return build_samples(args.strategy, n=args.n, n_responses=args.n_responses, data_dir=args.data_dir,
                         seed=args.seed)


def cmd_probe(args: argparse.Namespace) -> dict[str, Any]:
    from lensiar import Lens, probe_heads

    lens = Lens.from_pretrained(args.model)
    result = probe_heads(lens, _samples(args), val_fraction=args.val_fraction, seed=args.seed)
    top = [{"layer": layer, "head": head, "accuracy": round(float(result.accuracy[layer, head]), 4)}
           for layer, head in result.top(args.top_k)]
    out: dict[str, Any] = {"model": args.model, "strategy": args.strategy, "seed": args.seed,
                           "n_train": len(result.train_ids), "n_val": len(result.val_ids), "top_heads": top,
                           "layer_accuracy": [round(float(a), 4) for a in result.layer_accuracy]}
    if args.out:
        out["accuracy"] = result.accuracy.tolist()
        _write_json(Path(args.out), out)
        out = {k: v for k, v in out.items() if k != "accuracy"} | {"out": args.out}
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


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(value, fh)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _open_image(path: str) -> Any:
    from PIL import Image

    try:
        return Image.open(path).convert("RGB")
    except (OSError, ValueError) as exc:
        raise SystemExit(f"lensiar: cannot read image {path!r}: {exc}") from None


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    """End-to-end smoke on real weights until the full demo lands: SmolLM2 and a SmolVLM around it."""
    import numpy as np
    from PIL import Image

    from lensiar import Lens, Prompt
    from lensiar.hooks import KINDS
    from lensiar.testing import smolvlm_around_smollm2

    report: dict[str, Any] = {"model": "smollm2-135m-instruct", "seed": args.seed}
    t0 = time.perf_counter()
    llm = Lens.from_pretrained("smollm2-135m-instruct")
    report["load_s"] = round(time.perf_counter() - t0, 2)
    report["spec"] = llm.spec.to_dict()
    prompts = ["What is the capital of France?", "Give me three tips for staying healthy."]
    names = [f"blocks.*.{suffix}" for suffix in KINDS]
    cache = llm.run_with_cache(prompts, names, positions="last", progress=True)
    report["captured"] = {"names": len(cache), "example": {k: list(v.shape) for k, v in list(cache.items())[:5]}}
    report["generation"] = dict(zip(prompts, llm.generate(prompts, max_new_tokens=args.max_new_tokens), strict=True))
    vlm = Lens(*smolvlm_around_smollm2(seed=args.seed))
    image = Image.fromarray((np.random.RandomState(args.seed).rand(64, 64, 3) * 255).astype("uint8"))
    image_cache = vlm.run_with_cache([Prompt("Describe the image.", images=image)], "blocks.*.attn.hook_z",
                                     positions="image")
    report["vlm"] = {
        "spec": vlm.spec.to_dict(),
        "note": "SmolVLM-class model around the real SmolLM2 backbone; its vision tower is random",
        "image_tokens": int(image_cache.mask.sum()) if image_cache.mask is not None else 0,
        "text_answer": vlm.generate([prompts[0]], max_new_tokens=args.max_new_tokens)[0],
    }
    report["total_s"] = round(time.perf_counter() - t0, 2)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lensiar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the main job on the embedded default")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--max-new-tokens", type=int, default=24)
    demo.set_defaults(func=cmd_demo)

    spec = sub.add_parser("spec", help="print a model's spec (layers, heads, fingerprint)")
    spec.add_argument("model", help="local checkpoint directory or registry name, e.g. smollm2-135m-instruct")
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
        p.add_argument("model", help="local checkpoint directory or registry name")
        p.add_argument("--strategy", default="query", choices=["query", "single_response", "multi_response", "modality"])
        p.add_argument("--n", type=int, default=128, help="harmful prompts (and as many harmless for query)")
        p.add_argument("--n-responses", type=int, default=4, help="responses per prompt for multi_response")
        p.add_argument("--data-dir", default=None, help="benchmark data directory (default ../shared/data)")
        p.add_argument("--val-fraction", type=float, default=0.25)
        p.add_argument("--seed", type=int, default=0)

    probe = sub.add_parser("probe", help="probe every head and layer; rank heads by held-out accuracy")
    sample_options(probe)
    probe.add_argument("--top-k", type=int, default=10)
    probe.add_argument("--out", help="also write the full accuracy matrix to this JSON file")
    probe.set_defaults(func=cmd_probe)

    ext = sub.add_parser("extract", help="extract revision vectors into a bundle")
    sample_options(ext)
    ext.add_argument("--method", default="mms", choices=["mms", "probe", "pca"])
    ext.add_argument("--level", default="head", choices=["head", "layer"])
    ext.add_argument("--alpha", type=float, default=1.0, help="default alpha recorded in the bundle")
    ext.add_argument("--top-k", type=int, default=8, help="default top_k recorded in the bundle")
    ext.add_argument("--gate", action="store_true", help="store a conditional-revision gate (query strategy)")
    where = ext.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="bundle file (.safetensors)")
    where.add_argument("--name", help="save into the vector store under this name")
    ext.add_argument("--store", default="vector_store")
    ext.add_argument("--overwrite", action="store_true")
    ext.set_defaults(func=cmd_extract)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet()
    try:
        result = args.func(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
        print(f"lensiar {args.command}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
