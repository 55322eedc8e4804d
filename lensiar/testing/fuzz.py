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
