"""RevisionBundle: revision vectors in a safetensors file with JSON metadata in its header.

Tensors (head level / layer level):
    ``vectors``  ``[n_layers, n_heads, d_head]`` / ``[n_layers, d_model]``, unit norm along the last axis
    ``sigma``    ``[n_layers, n_heads]`` / ``[n_layers]``, spread of the samples along each vector
    ``accuracy`` same shape as ``sigma``, held-out probe accuracy in [0, 1]

The header's ``lensiar`` entry holds the format version, the model's spec (fingerprint and shape),
method, strategy, level, data ids and counts, default alpha / top_k and the lensiar version. Files
are written atomically (temporary file + rename) and never pickled.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from lensiar.probes import Gate, top_heads
from lensiar.spec import ModelSpec

FORMAT_VERSION = 1
LEVELS = ("head", "layer")


class BundleError(ValueError):
    """A bundle file or object that cannot be used; the message says why."""


@dataclass(frozen=True)
class RevisionBundle:
    """Revision vectors for one model, with what they were made from. Supports ``+``, ``-``, ``*`` like a vector:
    arithmetic acts on the shifts ``sigma * vectors``."""

    vectors: Float[Tensor, "n_layers ..."]
    sigma: Float[Tensor, "n_layers ..."]
    accuracy: Float[Tensor, "n_layers ..."]
    level: str
    model: dict[str, Any]
    method: str = "mms"
    strategy: str = "query"
    data: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=lambda: {"alpha": 1.0, "top_k": 8})
    gate: Gate | None = None

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise BundleError(f"level must be one of {LEVELS}, got {self.level!r}")
        expected = self.vectors.ndim - 1
        for name in ("sigma", "accuracy"):
            t = getattr(self, name)
            if tuple(t.shape) != tuple(self.vectors.shape[:expected]):
                raise BundleError(f"{name} has shape {tuple(t.shape)}, expected {tuple(self.vectors.shape[:expected])}")
        want = 3 if self.level == "head" else 2
        if self.vectors.ndim != want:
            raise BundleError(f"a {self.level}-level bundle has {want}-D vectors, got shape {tuple(self.vectors.shape)}")
        for name in ("vectors", "sigma", "accuracy"):
            if not torch.isfinite(getattr(self, name)).all():
                raise BundleError(f"bundle {name} contain NaN or infinite values")
        if self.gate is not None:
            d_model = self.model.get("d_model")
            if tuple(self.gate.weight.shape) != (d_model,) or not 0 <= self.gate.layer < self.vectors.shape[0]:
                raise BundleError(f"gate on layer {self.gate.layer} with weight {tuple(self.gate.weight.shape)} does "
                                  f"not fit a model of {self.vectors.shape[0]} layers and d_model {d_model}")
            if not torch.isfinite(self.gate.weight).all() or not math.isfinite(self.gate.bias):
                raise BundleError("bundle gate contains NaN or infinite values")

    # ------------------------------------------------------------------ selection
    def selection(self, top_k: int | None = None, layers: list[int] | None = None) -> Bool[Tensor, "n_layers ..."]:
        """What a revision touches: ``[n_layers, n_heads]`` (head level) or ``[n_layers]`` (layer level).

        The ``top_k`` heads (or layers) by held-out probe accuracy, among ``layers`` if given. At layer
        level, ``layers`` without ``top_k`` selects exactly those layers. ``top_k`` defaults to the bundle's.
        """
        n_layers = self.vectors.shape[0]
        if layers is not None:
            bad = [layer for layer in layers if not 0 <= layer < n_layers]
            if bad:
                raise BundleError(f"layers {bad} out of range for a model with {n_layers} layers")
        if self.level == "layer" and layers is not None and top_k is None:
            chosen = torch.zeros(n_layers, dtype=torch.bool)
            chosen[list(layers)] = True
            return chosen
        k = int(self.defaults.get("top_k", 8) if top_k is None else top_k)
        if k < 0:
            raise BundleError(f"top_k must be >= 0, got {k}")
        if self.level == "head":
            chosen = torch.zeros(self.accuracy.shape, dtype=torch.bool)
            for layer, head in top_heads(self.accuracy, k, layers):
                chosen[layer, head] = True
            return chosen
        allowed = range(n_layers) if layers is None else layers
        order = sorted(allowed, key=lambda i: (-float(self.accuracy[i]), i))[:k]
        chosen = torch.zeros(n_layers, dtype=torch.bool)
        chosen[order] = True
        return chosen

    # ------------------------------------------------------------------ arithmetic
    @property
    def shift(self) -> Tensor:
        """``sigma * vectors``: the displacement applied at alpha = 1."""
        return self.sigma.unsqueeze(-1) * self.vectors

    def _from_shift(self, shift: Tensor, accuracy: Tensor) -> RevisionBundle:
        norm = shift.norm(dim=-1)
        vectors = torch.where(norm.unsqueeze(-1) > 0, shift / norm.clamp_min(1e-12).unsqueeze(-1), self.vectors)
        return replace(self, vectors=vectors, sigma=norm, accuracy=accuracy, method=f"{self.method}*")

    def _check_compatible(self, other: RevisionBundle) -> None:
        if self.level != other.level or self.vectors.shape != other.vectors.shape:
            raise BundleError(f"cannot combine a {self.level} bundle {tuple(self.vectors.shape)} with a "
                              f"{other.level} bundle {tuple(other.vectors.shape)}")
        if self.model.get("fingerprint") != other.model.get("fingerprint"):
            raise BundleError("cannot combine bundles made for different models (fingerprints differ)")

    def __add__(self, other: RevisionBundle) -> RevisionBundle:
        self._check_compatible(other)
        return self._from_shift(self.shift + other.shift, torch.maximum(self.accuracy, other.accuracy))

    def __sub__(self, other: RevisionBundle) -> RevisionBundle:
        return self + (-other)

    def __mul__(self, scale: float) -> RevisionBundle:
        if not isinstance(scale, int | float) or not math.isfinite(scale):
            raise BundleError(f"a bundle can be scaled by a finite number, got {scale!r}")
        sign = -1.0 if scale < 0 else 1.0
        return replace(self, vectors=self.vectors * sign, sigma=self.sigma * abs(scale))

    __rmul__ = __mul__

    def __neg__(self) -> RevisionBundle:
        return replace(self, vectors=-self.vectors)

    # ------------------------------------------------------------------ files
    def metadata(self) -> dict[str, Any]:
        """The JSON metadata written into the safetensors header (format version, model, method, data, defaults)."""
        from lensiar import __version__

        gate = None if self.gate is None else {"layer": self.gate.layer, "bias": self.gate.bias,
                                               "threshold": self.gate.threshold, "images_only": self.gate.images_only}
        return {"format_version": FORMAT_VERSION, "lensiar_version": __version__, "level": self.level,
                "method": self.method, "strategy": self.strategy, "model": self.model, "data": self.data,
                "defaults": self.defaults, "gate": gate}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically to ``path`` (a ``.safetensors`` file)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tensors = {n: getattr(self, n).detach().to("cpu", torch.float32).contiguous()
                   for n in ("vectors", "sigma", "accuracy")}
        if self.gate is not None:
            tensors["gate_weight"] = self.gate.weight.detach().to("cpu", torch.float32).contiguous()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"lensiar": json.dumps(self.metadata(), sort_keys=True)})
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], lens: Any = None) -> RevisionBundle:
        """Read a bundle; with ``lens``, refuse it unless it was made for that model."""
        path = Path(path)
        if not path.is_file():
            raise BundleError(f"no bundle at {path}")
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except (SafetensorError, OSError, ValueError) as exc:
            raise BundleError(f"{path} is not a readable safetensors bundle (truncated or corrupt?): {exc}") from None
        if "lensiar" not in header:
            raise BundleError(f"{path} has no lensiar metadata; it is not a RevisionBundle")
        meta = json.loads(header["lensiar"])
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"{path} has bundle format version {version!r}; this lensiar reads version "
                              f"{FORMAT_VERSION} (upgrade lensiar or re-extract the bundle)")
        missing = {"vectors", "sigma", "accuracy"} - set(tensors)
        if missing:
            raise BundleError(f"{path} lacks tensors {sorted(missing)}")
        gate_meta = meta.get("gate")
        if gate_meta is not None and "gate_weight" not in tensors:
            raise BundleError(f"{path} declares a gate but lacks its gate_weight tensor")
        gate = None if gate_meta is None else Gate(int(gate_meta["layer"]), tensors["gate_weight"],
                                                    float(gate_meta["bias"]), float(gate_meta["threshold"]),
                                                    bool(gate_meta.get("images_only", False)))
        bundle = cls(vectors=tensors["vectors"], sigma=tensors["sigma"], accuracy=tensors["accuracy"],
                     level=meta["level"], model=meta["model"], method=meta["method"], strategy=meta["strategy"],
                     data=meta.get("data", {}), defaults=meta.get("defaults", {}), gate=gate)
        if lens is not None:
            bundle.validate(lens.spec)
        return bundle

    def validate(self, spec: ModelSpec) -> None:
        """Raise :class:`BundleError` unless this bundle fits the model described by ``spec``."""
        mine = self.model
        shape = {"n_layers": spec.n_layers, "n_heads": spec.n_heads, "d_head": spec.d_head, "d_model": spec.d_model}
        wrong = {k: (mine.get(k), v) for k, v in shape.items() if mine.get(k) != v}
        if wrong:
            detail = ", ".join(f"{k}: bundle {a} vs model {b}" for k, (a, b) in wrong.items())
            raise BundleError(f"bundle was made for a model of another shape ({detail})")
        if mine.get("fingerprint") != spec.fingerprint:
            raise BundleError(
                f"bundle was made for model {mine.get('architecture')} with fingerprint {mine.get('fingerprint')}, "
                f"not this {spec.architecture} ({spec.fingerprint}); re-extract it for this model"
            )
