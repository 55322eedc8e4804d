"""RevisionBundle: revision vectors in a safetensors file with JSON metadata in its header.

Tensors (head level / layer level):
    ``vectors``  ``[n_layers, n_heads, d_head]`` / ``[n_layers, d_model]``, unit norm along the last axis
    ``sigma``    ``[n_layers, n_heads]`` / ``[n_layers]``, spread of the samples along each vector
    ``accuracy`` same shape as ``sigma``, held-out probe accuracy in [0, 1]
    ``loss``     same shape as ``sigma``, held-out probe log-loss in nats (format 3; ranks the heads or layers)

The header's ``lensiar`` entry holds the format version, the model's spec (fingerprint and shape),
method, strategy, level, data ids and counts, default alpha / top_k and the lensiar version. Files
are written atomically (temporary file + rename) and never pickled. The header also holds ``sha256``, a hash
of the lensiar metadata and of every tensor's name, dtype, shape and bytes, checked on load, so silent corruption of the tensor data is
refused (format 2; format-1 files, which have none, still load). Format 3 adds ``loss``; files without it
rank by accuracy alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from lensiar.atomic import atomic_write, temp_files
from lensiar.probes import Gate, rank_cells
from lensiar.spec import ModelSpec

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  #: format 1 has no content hash; formats 1-2 have no held-out loss
LEVELS = ("head", "layer")
UNIT_TOLERANCE = 1e-3  #: how far from 1 a stored vector's norm may be
STALE_SECONDS = 600  #: a save's temporary file older than this was left by a killed save; the next save removes it


def content_hash(tensors: dict[str, Tensor], metadata: str = "") -> str:
    """sha256 over the lensiar ``metadata`` string and every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256(metadata.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


#: where a revision acts: every position of every forward pass ("all"), or only the forward passes that start a
#: sequence ("prompt": generated tokens, which continue the KV cache, are left alone)
POSITIONS = ("all", "prompt")
#: each value of :data:`POSITIONS` in words, for reports
POSITIONS_MEANING = {"all": "every position, generated tokens included",
                     "prompt": "the prompt only (generated tokens unrevised)"}

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
    loss: Float[Tensor, "n_layers ..."] | None = None

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise BundleError(f"level must be one of {LEVELS}, got {self.level!r}")
        expected = self.vectors.ndim - 1
        for name in self._per_cell():
            t = getattr(self, name)
            if tuple(t.shape) != tuple(self.vectors.shape[:expected]):
                raise BundleError(f"{name} has shape {tuple(t.shape)}, expected {tuple(self.vectors.shape[:expected])}")
        want = 3 if self.level == "head" else 2
        if self.vectors.ndim != want:
            raise BundleError(f"a {self.level}-level bundle has {want}-D vectors, got shape {tuple(self.vectors.shape)}")
        for name in ("vectors", *self._per_cell()):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or not t.is_floating_point():
                raise BundleError(f"bundle {name} must be a floating-point tensor, got "
                                  f"{getattr(t, 'dtype', type(t).__name__)}")
            if not torch.isfinite(t).all():
                raise BundleError(f"bundle {name} contain NaN or infinite values")
        norms = self.vectors.float().norm(dim=-1)
        off = ((norms - 1).abs() > UNIT_TOLERANCE) & (norms != 0)  # zero: a head or layer with no signal at all
        if off.any():
            raise BundleError(f"{int(off.sum())} bundle vectors are not unit norm (norms {float(norms.min()):.4g}.."
                              f"{float(norms.max()):.4g}); vectors are stored unit-normalised (or zero where there "
                              "is no signal), sigma holds the scale")
        if (self.sigma < 0).any():
            raise BundleError(f"bundle sigma must be >= 0, got a minimum of {float(self.sigma.min()):.4g}")
        if ((self.accuracy < 0) | (self.accuracy > 1)).any():
            raise BundleError(f"bundle accuracy must lie in [0, 1], got {float(self.accuracy.min()):.4g}.."
                              f"{float(self.accuracy.max()):.4g}")
        if self.loss is not None and (self.loss < 0).any():
            raise BundleError(f"bundle loss (held-out log-loss) must be >= 0, got a minimum of {float(self.loss.min()):.4g}")
        for name in ("model", "data", "defaults"):
            if not isinstance(getattr(self, name), dict):
                raise BundleError(f"bundle {name} must be a dict, got {type(getattr(self, name)).__name__}")
        for name in ("method", "strategy"):
            if not isinstance(getattr(self, name), str):
                raise BundleError(f"bundle {name} must be a string, got {type(getattr(self, name)).__name__}")
        self._check_defaults()
        self._check_own_shape()
        if self.gate is not None:
            d_model = self.model.get("d_model")
            if tuple(self.gate.weight.shape) != (d_model,) or not 0 <= self.gate.layer < self.vectors.shape[0]:
                raise BundleError(f"gate on layer {self.gate.layer} with weight {tuple(self.gate.weight.shape)} does "
                                  f"not fit a model of {self.vectors.shape[0]} layers and d_model {d_model}")
            if not torch.isfinite(self.gate.weight).all() or not math.isfinite(self.gate.bias):
                raise BundleError("bundle gate contains NaN or infinite values")

    def _per_cell(self) -> tuple[str, ...]:
        """Names of the tensors with one value per head (or layer)."""
        return ("sigma", "accuracy") if self.loss is None else ("sigma", "accuracy", "loss")

    def _check_defaults(self) -> None:
        if unknown := sorted(set(self.defaults) - {"alpha", "top_k", "positions"}):
            raise BundleError(f"unknown bundle default(s) {unknown}; known: alpha, top_k, positions")
        if self.defaults.get("positions", "all") not in POSITIONS:
            raise BundleError(f"bundle default positions must be one of {', '.join(map(repr, POSITIONS))}, got "
                              f"{self.defaults['positions']!r}")
        alpha, top_k = self.defaults.get("alpha", 1.0), self.defaults.get("top_k", 8)
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
            raise BundleError(f"bundle default alpha must be a finite number, got {alpha!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise BundleError(f"bundle default top_k must be an integer >= 0, got {top_k!r}")

    def _check_own_shape(self) -> None:
        """The tensors' shape against the model shape the bundle's own metadata states (where it states one)."""
        dims = {k: self.model.get(k) for k in ("n_layers", "n_heads", "d_head", "d_model")}
        for k, v in dims.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise BundleError(f"bundle model {k} must be a positive integer, got {v!r}")
        want = ((dims["n_layers"], dims["n_heads"], dims["d_head"]) if self.level == "head"
                else (dims["n_layers"], dims["d_model"]))
        if None not in want and tuple(self.vectors.shape) != want:
            raise BundleError(f"bundle vectors have shape {tuple(self.vectors.shape)}, but its model "
                              f"({self.model.get('architecture')}) needs {want} at {self.level} level")

    def __repr__(self) -> str:
        shape = "x".join(str(d) for d in self.vectors.shape)
        arch = self.model.get("architecture", "?")
        gate = f", gate at layer {self.gate.layer}" if self.gate is not None else ""
        where = f", {self.defaults['positions']} positions" if self.defaults.get("positions", "all") != "all" else ""
        return (f"RevisionBundle({self.level} level, {self.method}/{self.strategy}, vectors {shape}, for {arch} "
                f"{self.model.get('fingerprint', '?')}, alpha {self.defaults.get('alpha', 1.0)}, top_k "
                f"{self.defaults.get('top_k', 8)}{gate}{where})")

    def _repr_html_(self) -> str:
        chosen = rank_cells(self.loss, self.accuracy, int(self.defaults.get("top_k", 8)))[:10]
        scores = self.loss

        def loss(c: tuple[int, ...]) -> str:
            return "-" if scores is None else f"{float(scores[c]):.4f}"

        rows = "".join(f"<tr><td>{f'L{c[0]}H{c[1]}' if len(c) == 2 else f'L{c[0]}'}</td><td>{loss(c)}</td>"
                       f"<td>{float(self.accuracy[c]):.3f}</td><td>{float(self.sigma[c]):.3g}</td></tr>"
                       for c in chosen)
        return (f"<p>{self!r}</p><table><tr><th>selected</th><th>held-out log-loss</th><th>accuracy</th>"
                f"<th>sigma</th></tr>{rows}</table>")

    # ------------------------------------------------------------------ selection
    def selection(self, top_k: int | None = None, layers: list[int] | None = None) -> Bool[Tensor, "n_layers ..."]:
        """What a revision touches: ``[n_layers, n_heads]`` (head level) or ``[n_layers]`` (layer level).

        The ``top_k`` heads (or layers) by held-out probe log-loss (by accuracy for bundles that have no loss),
        among ``layers`` if given. At layer
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
        chosen = torch.zeros(self.accuracy.shape, dtype=torch.bool)
        for cell in rank_cells(self.loss, self.accuracy, k, layers):
            chosen[cell] = True
        return chosen

    # ------------------------------------------------------------------ arithmetic
    @property
    def shift(self) -> Tensor:
        """``sigma * vectors``: the displacement applied at alpha = 1."""
        return self.sigma.unsqueeze(-1) * self.vectors

    def _from_shift(self, shift: Tensor, other: RevisionBundle) -> RevisionBundle:
        """A bundle holding ``shift``; each cell keeps the better probe score of the two operands."""
        norm = shift.norm(dim=-1)
        vectors = torch.where(norm.unsqueeze(-1) > 0, shift / norm.clamp_min(1e-12).unsqueeze(-1), self.vectors)
        loss = None if self.loss is None or other.loss is None else torch.minimum(self.loss, other.loss)
        return replace(self, vectors=vectors, sigma=norm, accuracy=torch.maximum(self.accuracy, other.accuracy),
                       loss=loss, method=f"{self.method}*")

    def _check_compatible(self, other: RevisionBundle) -> None:
        if self.level != other.level or self.vectors.shape != other.vectors.shape:
            raise BundleError(f"cannot combine a {self.level} bundle {tuple(self.vectors.shape)} with a "
                              f"{other.level} bundle {tuple(other.vectors.shape)}")
        if self.model.get("fingerprint") != other.model.get("fingerprint"):
            raise BundleError("cannot combine bundles made for different models (fingerprints differ)")

    def __add__(self, other: RevisionBundle) -> RevisionBundle:
        self._check_compatible(other)
        return self._from_shift(self.shift + other.shift, other)

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
                   for n in ("vectors", *self._per_cell())}
        if self.gate is not None:
            tensors["gate_weight"] = self.gate.weight.detach().to("cpu", torch.float32).contiguous()
        for stale in temp_files(target):  # left by a save killed mid-way
            if time.time() - stale.stat().st_mtime > STALE_SECONDS:
                stale.unlink(missing_ok=True)
        meta = json.dumps(self.metadata(), sort_keys=True)
        return atomic_write(target, lambda tmp: save_file(tensors, tmp, metadata={
            "lensiar": meta, "sha256": content_hash(tensors, meta)}))

    @classmethod
    def load(cls, path: str | os.PathLike[str], lens: Any = None) -> RevisionBundle:
        """Read a bundle; with ``lens``, refuse it unless it was made for that model. Anything wrong with the file
        (truncated, corrupt, tampered header or tensors, wrong types or shapes) raises :class:`BundleError`
        naming the file and the problem."""
        path = Path(path)
        try:
            bundle = cls._read(path)
            if lens is not None:
                bundle.validate(lens.spec)
        except BundleError as exc:
            message = str(exc)
            raise BundleError(message if str(path) in message else f"{path}: {message}") from None
        except Exception as exc:  # a malformed file must never surface as a raw error
            raise BundleError(f"{path}: malformed bundle ({type(exc).__name__}: {exc})") from None
        return bundle

    @classmethod
    def _read(cls, path: Path) -> RevisionBundle:
        if not path.is_file():
            raise BundleError(f"no bundle at {path}")
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise BundleError(f"{path} is not a readable safetensors bundle (truncated or corrupt?): {exc}") from None
        if "lensiar" not in header:
            raise BundleError(f"{path} has no lensiar metadata; it is not a RevisionBundle")
        try:
            meta = json.loads(header["lensiar"])
        except json.JSONDecodeError as exc:
            raise BundleError(f"{path}: its lensiar metadata is not valid JSON ({exc.msg})") from None
        if not isinstance(meta, dict):
            raise BundleError(f"{path}: its lensiar metadata must be a JSON object, got {type(meta).__name__}")
        version = meta.get("format_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise BundleError(f"{path} has bundle format version {version!r}; this lensiar reads versions "
                              f"{READABLE_VERSIONS} (upgrade lensiar or re-extract the bundle)")
        if version >= 2:
            if not isinstance(header.get("sha256"), str):
                raise BundleError(f"{path} has no content hash (sha256) in its header")
            if content_hash(tensors, header["lensiar"]) != header["sha256"]:
                raise BundleError(f"{path}: its tensors or metadata do not match the content hash in its header "
                                  "(corrupted or edited after saving)")
        missing = {"vectors", "sigma", "accuracy"} - set(tensors)
        if missing:
            raise BundleError(f"{path} lacks tensors {sorted(missing)}")
        known = {"vectors", "sigma", "accuracy", "gate_weight"} | ({"loss"} if version >= 3 else set())
        if extra := set(tensors) - known:
            raise BundleError(f"{path} holds unknown tensors {sorted(extra)}")
        for key, kind in (("level", str), ("model", dict), ("method", str), ("strategy", str)):
            if not isinstance(meta.get(key), kind):
                raise BundleError(f"{path}: metadata {key!r} must be a {kind.__name__}, got {meta.get(key)!r:.60}")
        for key in ("data", "defaults"):
            if not isinstance(meta.get(key, {}), dict):
                raise BundleError(f"{path}: metadata {key!r} must be a dict")
        gate_meta = meta.get("gate")
        gate = None
        if gate_meta is not None:
            if "gate_weight" not in tensors:
                raise BundleError(f"{path} declares a gate but lacks its gate_weight tensor")
            gate = _gate_from(gate_meta, tensors["gate_weight"], path)
        elif "gate_weight" in tensors:
            raise BundleError(f"{path} holds a gate_weight tensor but no gate metadata")
        return cls(vectors=tensors["vectors"], sigma=tensors["sigma"], accuracy=tensors["accuracy"],
                   level=meta["level"], model=meta["model"], method=meta["method"], strategy=meta["strategy"],
                   data=meta.get("data", {}), defaults=meta.get("defaults", {}), gate=gate, loss=tensors.get("loss"))

    def validate(self, spec: ModelSpec) -> None:
        """Raise :class:`BundleError` unless this bundle fits the model described by ``spec``: its stated shape
        and fingerprint, and the shape of its tensors (vectors, and a gate's weight)."""
        mine = self.model
        shape = {"n_layers": spec.n_layers, "n_heads": spec.n_heads, "d_head": spec.d_head, "d_model": spec.d_model}
        wrong = {k: (mine.get(k), v) for k, v in shape.items() if mine.get(k) != v}
        if wrong:
            detail = ", ".join(f"{k}: bundle {a} vs model {b}" for k, (a, b) in wrong.items())
            raise BundleError(f"bundle was made for a model of another shape ({detail})")
        want = ((spec.n_layers, spec.n_heads, spec.d_head) if self.level == "head" else (spec.n_layers, spec.d_model))
        if tuple(self.vectors.shape) != want:
            raise BundleError(f"bundle vectors have shape {tuple(self.vectors.shape)}; this model needs {want} at "
                              f"{self.level} level")
        if self.gate is not None and tuple(self.gate.weight.shape) != (spec.d_model,):
            raise BundleError(f"bundle gate weight has shape {tuple(self.gate.weight.shape)}; this model needs "
                              f"({spec.d_model},)")
        if mine.get("fingerprint") != spec.fingerprint:
            raise BundleError(
                f"bundle was made for model {mine.get('architecture')} with fingerprint {mine.get('fingerprint')}, "
                f"not this {spec.architecture} ({spec.fingerprint}); re-extract it for this model"
            )


def _gate_from(meta: Any, weight: Tensor, path: Path) -> Gate:
    """A :class:`Gate` from header metadata, with every field's type checked (no truthy strings)."""
    if not isinstance(meta, dict):
        raise BundleError(f"{path}: gate metadata must be a JSON object")
    layer, bias, threshold = meta.get("layer"), meta.get("bias"), meta.get("threshold")
    images_only = meta.get("images_only", False)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise BundleError(f"{path}: gate layer must be an integer, got {layer!r}")
    for name, value in (("bias", bias), ("threshold", threshold)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise BundleError(f"{path}: gate {name} must be a finite number, got {value!r}")
    assert isinstance(threshold, int | float) and isinstance(bias, int | float)
    if not 0 <= threshold <= 1:
        raise BundleError(f"{path}: gate threshold must lie in [0, 1], got {threshold!r}")
    if not isinstance(images_only, bool):
        raise BundleError(f"{path}: gate images_only must be true or false, got {images_only!r}")
    if not weight.is_floating_point():
        raise BundleError(f"{path}: gate weight must be floating point, got {weight.dtype}")
    return Gate(layer, weight, float(bias), float(threshold), images_only)
