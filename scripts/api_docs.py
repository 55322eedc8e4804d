"""Generate docs/api.md from the docstrings and signatures of lensiar's public modules.

    python scripts/api_docs.py            # rewrite docs/api.md
    python scripts/api_docs.py --check    # exit 1 if docs/api.md is stale (run by the tests)
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

MODULES = [
    ("lensiar.lens", "The Lens: a model read through hook names"),
    ("lensiar.prompt", "Prompts"),
    ("lensiar.models", "Loading: registry names, local checkpoints, hub ids"),
    ("lensiar.processors", "Processors, image-only without torchvision"),
    ("lensiar.offload", "Offloaded models (accelerate device maps)"),
    ("lensiar.spec", "Model shape and fingerprint"),
    ("lensiar.arch", "Architecture table"),
    ("lensiar.hooks", "Hook names"),
    ("lensiar.cache", "Activation cache"),
    ("lensiar.samples", "Contrastive samples"),
    ("lensiar.responses", "Real responses for the response strategies"),
    ("lensiar.features", "Sample activations"),
    ("lensiar.probes", "Probes and ranking"),
    ("lensiar.vectors", "Extraction"),
    ("lensiar.bundle", "Revision bundles"),
    ("lensiar.revision", "Revision hooks and baking"),
    ("lensiar.store", "Vector store"),
    ("lensiar.export", "llama.cpp export"),
    ("lensiar.datasets", "Benchmark datasets"),
    ("lensiar.data_sources", "Raw data sources"),
    ("lensiar.judges", "Judges"),
    ("lensiar.topic_likelihood", "The likelihood topic test (the default judge)"),
    ("lensiar.evaluate", "Evaluation runner"),
    ("lensiar.attribution", "Head attribution and patching"),
    ("lensiar.report", "Reports"),
    ("lensiar.adaptation", "VL adaptation analysis"),
    ("lensiar.merge", "Weight merging"),
    ("lensiar.render", "Typographic renderer"),
    ("lensiar.prompts", "Benchmark-style prompts"),
    ("lensiar.organism", "The embedded organism"),
    ("lensiar.demo", "The demo"),
    ("lensiar.ablation", "The IAR ablation (lensiar ablate)"),
    ("lensiar.organism.safety", "The organism's safety-tuned variants (lensiar organism variants)"),
    ("lensiar.comparison", "Safety tuning vs joint tuning vs merging (lensiar compare)"),
    ("lensiar.testing", "Tiny random models"),
]
OUT = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _doc(obj: object) -> str:
    return inspect.cleandoc(obj.__doc__ or "").strip() or "*(no docstring)*"


ROOT = str(Path(__file__).resolve().parents[1])


def _signature(obj: object) -> str:
    """The signature, with this checkout's absolute path replaced so the output is the same on every machine."""
    try:
        text = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"
    return re.sub(r"PosixPath\('([^']*)'\)", lambda m: "'" + m.group(1).replace(ROOT, "<repo>") + "'", text)


def _public(module: object) -> list[tuple[str, object]]:
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    out = []
    for name in names:
        obj = getattr(module, name)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__.startswith(module.__name__):
            out.append((name, obj))
    return out


def render() -> str:
    lines = ["# API reference", "", "Generated from the docstrings by `python scripts/api_docs.py`; do not edit by hand.",
             "Shapes are jaxtyping annotations (`Float[Tensor, \"n_layers n_heads\"]`).", ""]
    lines += [f"- [{title}](#{mod.replace('.', '')}) `{mod}`" for mod, title in MODULES] + [""]
    for mod_name, title in MODULES:
        module = importlib.import_module(mod_name)
        lines += [f"## {mod_name}", "", f"*{title}.* " + _doc(module).split("\n\n")[0], ""]
        for name, obj in _public(module):
            kind = "class" if inspect.isclass(obj) else "def"
            lines += [f"### `{kind} {name}{_signature(obj)}`", "", _doc(obj), ""]
            if inspect.isclass(obj):
                for member, fn in vars(obj).items():
                    if member.startswith("_") and member != "__call__":
                        continue
                    target = fn.__func__ if isinstance(fn, (classmethod, staticmethod)) else fn
                    if isinstance(fn, property):
                        lines += [f"- `{name}.{member}` (property): " + _doc(fn.fget).split("\n")[0]]
                    elif inspect.isfunction(target):
                        lines += [f"- `{name}.{member}{_signature(target)}`: " + " ".join(_doc(target).split("\n"))]
                    elif hasattr(fn, "func") and inspect.isfunction(fn.func):  # functools.cached_property
                        lines += [f"- `{name}.{member}` (property): " + _doc(fn.func).split("\n")[0]]
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python scripts/api_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
