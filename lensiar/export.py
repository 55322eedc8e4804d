"""Export of layer-level revisions to llama.cpp's control-vector GGUF format.

llama.cpp adds tensor ``direction.N`` to the residual leaving block ``N`` (0-based; block 0 cannot
be steered), scaled by ``--control-vector-scaled FILE S``. Exported directions are the shifts
``alpha * sigma * v`` of the chosen layers, so ``S = 1`` reproduces ``lens.revise`` at that alpha.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lensiar.bundle import BundleError, RevisionBundle


def export_control_vector(
    bundle: RevisionBundle,
    path: str | os.PathLike[str],
    alpha: float | None = None,
    top_k: int | None = None,
    layers: list[int] | None = None,
    model_hint: str | None = None,
) -> Path:
    """Write the selected layers' shifts as a llama.cpp control vector (atomically); returns the path.

    The selection is the bundle's (``top_k`` best layers, or exactly ``layers``); without ``layers`` it is made
    among layers 1.. since llama.cpp cannot steer block 0's output.
    """
    import gguf

    if bundle.level != "layer":
        raise BundleError("llama.cpp control vectors act on the residual stream: export a layer-level bundle")
    if layers is None:
        k = bundle.defaults.get("top_k", 1) if top_k is None else top_k
        chosen = bundle.selection(k, list(range(1, bundle.vectors.shape[0])))
    else:
        chosen = bundle.selection(top_k, layers)
    if bool(chosen[0]):
        raise BundleError("llama.cpp cannot steer the output of block 0; choose other layers (layers=[...])")
    a = float(bundle.defaults.get("alpha", 1.0) if alpha is None else alpha)
    hint = model_hint or str(bundle.model.get("model_type", "llama"))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        writer = gguf.GGUFWriter(str(tmp), "controlvector")
        writer.add_string("controlvector.model_hint", hint)
        writer.add_uint32("controlvector.layer_count", int(bundle.vectors.shape[0]) - 1)
        for layer in chosen.nonzero().flatten().tolist():
            shift = (a * bundle.shift[layer]).to(torch.float32).numpy()
            writer.add_tensor(f"direction.{layer}", np.ascontiguousarray(shift))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def read_control_vector(path: str | os.PathLike[str]) -> tuple[str, dict[int, torch.Tensor]]:
    """``(model_hint, {block: direction})`` of a control-vector GGUF, read with gguf's reader."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get("controlvector.model_hint")
    if field is None:
        raise BundleError(f"{path} is not a control-vector GGUF (no controlvector.model_hint)")
    hint = bytes(field.parts[field.data[0]]).decode()
    directions = {int(t.name.split(".")[1]): torch.from_numpy(np.array(t.data, dtype=np.float32)).reshape(-1)
                  for t in reader.tensors if t.name.startswith("direction.")}
    return hint, directions
