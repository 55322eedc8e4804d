"""Seeded fuzzing of what users share and type: bundle files, the vector store's index, CLI arguments.

Each function returns counts by outcome; the goal for every one is zero ``crash`` (an exception other than the
documented error type) and zero ``loaded_corrupted`` (a mutated file accepted with different contents).
``tests/test_fuzz.py`` runs a few hundred cases; ``benchmarks/fuzz.py --cases 10000`` runs the long version.
"""

from __future__ import annotations

import json
import random
import struct
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MUTATIONS = ("truncate", "flip_data", "flip_header", "dtype", "shape", "nan", "drop_tensor", "meta_value",
             "wrong_model", "garbage")


def _split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header: dict[str, Any], data: bytes) -> bytes:
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + data


def mutate(raw: bytes, kind: str, rng: random.Random) -> bytes:
    """One mutation of a saved bundle's bytes (see :data:`MUTATIONS`)."""
    (n,) = struct.unpack("<Q", raw[:8])
    if kind == "truncate":
        return raw[: rng.randrange(len(raw))]
    if kind == "garbage":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 256)))
    if kind in ("flip_data", "flip_header"):
        lo, hi = (8 + n, len(raw)) if kind == "flip_data" else (0, 8 + n)
        pos = rng.randrange(lo, hi)
        out = bytearray(raw)
        out[pos] ^= 1 << rng.randrange(8)
        return bytes(out)
    header, data = _split(raw)
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    if kind == "dtype":
        header[name]["dtype"] = rng.choice(["F16", "BF16", "I32", "BOOL", "U8", "F64"])
    elif kind == "shape":
        shape = header[name]["shape"]
        header[name]["shape"] = list(reversed(shape)) if len(shape) > 1 and rng.random() < 0.5 else [*shape, 1]
    elif kind == "nan":  # a NaN written over one float of the data, header (and hash) left as they were
        start, _ = header[name]["data_offsets"]
        out = bytearray(data)
        out[start : start + 4] = struct.pack("<f", float("nan"))
        data = bytes(out)
    elif kind == "drop_tensor":
        del header[name]
    elif kind == "meta_value":
        meta = json.loads(header["__metadata__"]["lensiar"])
        key = rng.choice(sorted(meta))
        meta[key] = rng.choice([None, "x", 3, -1.5, [], {}, True, float("nan")])
        header["__metadata__"]["lensiar"] = json.dumps(meta)
    return _join(header, data)


def bundle_fuzz(cases: int, seed: int = 0, progress: Callable[[int], None] | None = None) -> Counter[str]:
    """Mutate saved bundles of a tiny LLaVA ``cases`` times and load each against the model. Outcomes:
    ``refused`` (:class:`~lensiar.bundle.BundleError`), ``loaded_identical`` (accepted, same tensors and metadata:
    the mutation hit nothing that matters), ``loaded_corrupted`` and ``crash`` (any other exception)."""
    from lensiar.bundle import BundleError, RevisionBundle
    from lensiar.lens import Lens
    from lensiar.testing import tiny_model

    lens = Lens(*tiny_model("llava"))
    other = Lens(*tiny_model("llama"))
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        originals = []
        for k, level in enumerate(("head", "layer")):
            s = lens.spec
            g = torch.Generator().manual_seed(seed + k)
            shape = (s.n_layers, s.n_heads, s.d_head) if level == "head" else (s.n_layers, s.d_model)
            v = torch.randn(*shape, generator=g)
            bundle = RevisionBundle(vectors=v / v.norm(dim=-1, keepdim=True), sigma=torch.rand(*shape[:-1], generator=g),
                                    accuracy=torch.rand(*shape[:-1], generator=g), level=level, model=s.to_dict())
            path = bundle.save(root / f"{level}.safetensors")
            originals.append((bundle, path.read_bytes()))
        for case in range(cases):
            bundle, raw = rng.choice(originals)
            kind = MUTATIONS[case % len(MUTATIONS)]
            target = other if kind == "wrong_model" else lens
            data = raw if kind == "wrong_model" else mutate(raw, kind, rng)
            path = root / "case.safetensors"
            path.write_bytes(data)
            try:
                loaded = RevisionBundle.load(path, lens=target)
            except BundleError:
                counts["refused"] += 1
            except Exception:
                counts["crash"] += 1
                counts[f"crash:{kind}"] += 1
            else:
                same = (all(torch.equal(getattr(loaded, t), getattr(bundle, t)) for t in ("vectors", "sigma", "accuracy"))
                        and loaded.metadata() == bundle.metadata())
                counts["loaded_identical" if same else "loaded_corrupted"] += 1
                if not same:
                    counts[f"loaded_corrupted:{kind}"] += 1
            if progress is not None:
                progress(case)
    return counts


def store_fuzz(cases: int, seed: int = 0) -> Counter[str]:
    """Tamper with a store's ``index.json`` ``cases`` times, then list, load and remove. Outcomes: ``refused``
    (BundleError), ``ok``, ``escaped`` (a file outside the store was read or deleted) and ``crash``."""
    from lensiar.bundle import BundleError
    from lensiar.lens import Lens
    from lensiar.store import VectorStore
    from lensiar.testing import tiny_model

    lens = Lens(*tiny_model("llava"))
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    values: list[Any] = [None, 3, [], {}, "", "../outside.safetensors", "/etc/hostname", "a\nb.safetensors",
                         "x.safetensors", "sub/x.safetensors", "b.safetensors", "..", "b.safetensors\n"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        outside = root / "outside.safetensors"
        store = VectorStore(root / "vs")
        s = lens.spec
        from lensiar.bundle import RevisionBundle

        v = torch.randn(s.n_layers, s.d_model)
        store.save("b", RevisionBundle(vectors=v / v.norm(dim=-1, keepdim=True), sigma=torch.ones(s.n_layers),
                                       accuracy=torch.ones(s.n_layers) * 0.5, level="layer", model=s.to_dict()))
        good = store.index_path.read_text()
        bundle_bytes = (store.root / "b.safetensors").read_bytes()
        for _ in range(cases):
            outside.write_text("keep")
            (store.root / "b.safetensors").write_bytes(bundle_bytes)
            index = json.loads(good)
            choice = rng.randrange(4)
            if choice == 0:
                index["bundles"]["b"]["file"] = rng.choice(values)
            elif choice == 1:
                index["bundles"]["b"] = rng.choice(values)
            elif choice == 2:
                index["bundles"] = rng.choice(values)
            else:
                index = rng.choice(values)
            store.index_path.write_text(json.dumps(index))
            outcome = "ok"
            for action in (lambda: store.list(), lambda: store.load("b", lens=lens), lambda: store.remove("b")):
                try:
                    action()
                except BundleError:
                    outcome = "refused"
                except Exception:
                    outcome = "crash"
                    break
            if not outside.exists() or outside.read_text() != "keep":
                outcome = "escaped"
            counts[outcome] += 1
            store.index_path.write_text(good)
    return counts


def random_bundles(spec: Any, generator: torch.Generator) -> tuple[Any, Any]:
    """A random head-level bundle (with a gate on the middle layer) and a random layer-level bundle for ``spec``."""
    from lensiar.bundle import RevisionBundle
    from lensiar.probes import Gate

    s, g = spec, generator

    def unit(*shape: int) -> torch.Tensor:
        v = torch.randn(*shape, generator=g)
        return v / v.norm(dim=-1, keepdim=True)

    gate = Gate(layer=s.n_layers // 2, weight=torch.randn(s.d_model, generator=g), bias=0.0)
    return (RevisionBundle(vectors=unit(s.n_layers, s.n_heads, s.d_head), sigma=torch.rand(s.n_layers, s.n_heads,
                                                                                               generator=g) + 0.5,
                              accuracy=torch.rand(s.n_layers, s.n_heads, generator=g), level="head", model=s.to_dict(),
                              gate=gate),
               RevisionBundle(vectors=unit(s.n_layers, s.d_model), sigma=torch.rand(s.n_layers, generator=g) + 0.5,
                              accuracy=torch.rand(s.n_layers, generator=g), level="layer", model=s.to_dict()))


def revise_fuzz(lens: Any, cycles: int, seed: int = 0, prompt: str = "hi there") -> Counter[str]:
    """``cycles`` random revision blocks on ``lens``: head level, layer level or both, gated or not, nested, with a
    forward or a short ``generate`` inside, and exceptions raised inside the block, inside a nested block or from a
    hook in the middle of generation (``raised_in_*`` counts those that reached the caller). Outcomes per cycle: ``clean``, ``leftover_hooks`` (a hook or a registered
    revision survived the block), ``crash`` (an exception other than the one raised on purpose); and, once at the
    end, ``weights_changed`` when any parameter differs from before."""
    rng = random.Random(seed)
    s = lens.spec
    g = torch.Generator().manual_seed(seed)

    bundles = list(random_bundles(s, g))

    def hook_count() -> int:
        return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in lens.model.modules())

    class Planned(Exception):
        """The exception a cycle raises on purpose."""

    def raise_after(calls: int) -> Callable[..., None]:
        seen = [0]

        def hook(*_: Any) -> None:
            seen[0] += 1
            if seen[0] > calls:
                raise Planned("raised inside generation")
        return hook

    weights = [p.detach().clone() for p in lens.model.parameters()]
    hooks = hook_count()
    counts: Counter[str] = Counter()
    for _ in range(cycles):
        chosen = rng.choice([[bundles[0]], [bundles[1]], bundles])
        gated = rng.random() < 0.3 and chosen[0].gate is not None
        where = rng.choice(["block", "nested", "generation", "none"])
        handle = None
        try:
            with lens.revise(chosen[0] if gated else chosen, alpha=rng.uniform(-3, 3), top_k=rng.randint(1, 4),
                             gate=gated):
                if rng.random() < 0.5:
                    with lens.revise(bundles[1], alpha=1.0):
                        if where == "nested":
                            raise Planned("inner")
                if rng.random() < 0.5 or where == "generation":
                    if where == "generation":  # a hook of the user's that raises a few steps into generation
                        handle = lens.o_proj(rng.randrange(s.n_layers)).register_forward_hook(
                            raise_after(rng.randint(0, 3)))
                    lens.generate([prompt], max_new_tokens=rng.randint(1, 4))
                else:
                    lens.forward([prompt])
                if where == "block":
                    raise Planned("outer")
        except Planned:
            counts[f"raised_in_{where}"] += 1
        except Exception:
            counts["crash"] += 1
        finally:
            if handle is not None:
                handle.remove()
        counts["leftover_hooks" if lens._revisions or hook_count() != hooks else "clean"] += 1
    if not all(torch.equal(a, b) for a, b in zip(weights, lens.model.parameters(), strict=True)):
        counts["weights_changed"] += 1
    return counts


def cli_fuzz(cases: int, seed: int = 0, failures: list[tuple[str, list[str], str]] | None = None) -> Counter[str]:
    """``cases`` CLI invocations, each with one or two bad arguments drawn from a table (bad numbers, non-ASCII
    digits, NaN, missing or wrong-kind files, outputs in a missing folder or on a folder, unknown choices) on a
    saved tiny model. Outcomes: ``refused`` (exit 2, no traceback, nothing written), ``traceback``, ``accepted``
    (exit 0 on bad input), ``left_files`` (refused but wrote something) and ``other_exit``. ``failures``, if
    given, collects (outcome, argv, stderr's last line) for every case that was not refused cleanly."""
    import contextlib
    import io
    import os
    import shutil

    from lensiar.cli import main
    from lensiar.testing import tiny_model

    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, tokenizer = tiny_model("llama")
        model.save_pretrained(root / "model")
        tokenizer.save_pretrained(root / "model")
        (root / "garbage.bin").write_bytes(b"\x00not a file of any kind")
        (root / "a_folder").mkdir()
        m = str(root / "model")
        missing, garbage, folder = str(root / "missing.x"), str(root / "garbage.bin"), str(root / "a_folder")
        unwritable = "/proc/lensiar-fuzz/out.x"  # a folder nobody may create
        numbers = ["0", "-3", "x", "nan", "inf", "\u0663", "", "1.5"]
        table: list[tuple[list[str], dict[str, list[str]]]] = [
            (["probe", m, "--n", "8"], {"--n": numbers, "--val-fraction": ["x", "nan", "-0.1", "1.5", "1", "0"],
                                        "--seed": ["-1", "x"], "--data-dir": [missing, garbage],
                                        "--top-k": numbers, "--n-responses": ["0", "-2"], "--strategy": ["nosuch"],
                                        "--out": [unwritable, folder]}),
            (["extract", m, "--n", "8", "--out", "b.safetensors"],
             {"--alpha": ["nan", "inf", "x", ""], "--top-k": numbers, "--method": ["nosuch"], "--level": ["x"],
              "--data-dir": [missing, garbage], "--out": [unwritable, folder]}),
            (["eval", m, "--preset", "xstest", "--n", "2", "--out", "r.jsonl"],
             {"--batch-size": numbers, "--max-new-tokens": numbers, "--preset": ["nosuch", "xstest:nosuch"],
              "--file": [missing, folder, garbage], "--bundle": [missing, garbage, folder], "--judge": ["gpt"],
              "--alpha": ["nan"], "--n": numbers, "--out": [unwritable, folder]}),
            (["revise", m, "--prompt", "hi", "--bundle", garbage],
             {"--bundle": [missing, garbage, folder], "--alpha": ["nan", "x"], "--top-k": numbers,
              "--image": [missing, garbage], "--max-new-tokens": numbers}),
            (["capture", m, "--prompt", "hi", "--out", "c.safetensors", "--names", "nonsense"],
             {"--names": ["blocks.99.attn.hook_z", "nonsense", "blocks.\u0663.attn.hook_z"], "--positions": ["x"],
              "--image": [missing, garbage], "--out": [unwritable, folder]}),
            (["spec", missing], {}),
            (["judge-agreement", "--labels", missing], {"--labels": [missing, garbage, folder],
                                                        "--judges": ["", ",", "gpt"]}),
            (["organism", "report", "--weights", missing, "--out", "t"],
             {"--weights": [missing, garbage], "--n": numbers, "--image-tokens": numbers}),
            (["organism", "build", "--quick", "--out", "o", "--recipe", "999"],
             {"--recipe": ["999", "x", "-1"], "--seed": ["nosuch=1", "data=x", "data"], "--reuse": [missing, garbage]}),
            (["store", "--store", folder, "show", "nosuch"], {}),
            (["store", "--store", folder, "export-gguf", "nosuch", "--out", "g.gguf"], {"--top-k": numbers}),
            (["merge", "--base", missing, "--safe", m, "--vl", m, "--lambda", "0.5", "--out", "merged"],
             {"--lambda": ["nan", "x"], "--base": [missing, garbage], "--layers": ["99", "-1", "x", ""],
              "--out": [unwritable]}),
        ]
        work = root / "cwd"
        for _ in range(cases):
            argv, options = rng.choice(table)
            argv = list(argv)
            for name in rng.sample(sorted(options), min(len(options), rng.randint(1, 2))):
                value = rng.choice(options[name])
                if name in argv:
                    argv[argv.index(name) + 1] = value
                else:
                    argv += [name, value]
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            here = os.getcwd()
            err = io.StringIO()
            os.chdir(work)
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    try:
                        code = main(argv)
                    except SystemExit as exc:  # argparse's own refusals
                        code = exc.code if isinstance(exc.code, int) else 2
            finally:
                os.chdir(here)
            wrote = any(work.iterdir())
            outcome = ("traceback" if "Traceback" in err.getvalue() else "accepted" if code == 0 else
                       "other_exit" if code != 2 else "left_files" if wrote else "refused")
            counts[outcome] += 1
            if outcome != "refused" and failures is not None:
                lines = err.getvalue().strip().splitlines()
                failures.append((outcome, [a.replace(str(root), "$TMP") for a in argv], lines[-1] if lines else ""))
    return counts
