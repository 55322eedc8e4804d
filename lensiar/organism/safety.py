"""Multimodal safety data (VLGuard-style) and the organism's safety-tuned variants.

The second paper's comparison needs, beside the organism ``V`` (benign VL adaptation of the safety-tuned
backbone), checkpoints that saw safety data on images. All of them start from ``P``, the common parent: the
stage-S backbone inside the VLM with the trained vision tower, before stage V (``organism.load(stage="S")``).

* ``V_safe``: ``V`` further LoRA-tuned on :class:`SafetyMix` (sequential safety tuning after adaptation);
* ``P_safe``: ``P`` LoRA-tuned on the same mix (safety tuning trained apart from adaptation, the task vector
  ``tau_safe = P_safe - P`` that task arithmetic adds to ``V``);
* ``V_joint``: stage V rerun from ``P`` with the mix inside its data from the first step (the simultaneous setting).

The mix, from train splits only: harmful requests drawn as TYPO / FigStep images answered with refusals (after
the copy and plain-words line that every stage-V image answer opens with); benign requests drawn the same way
answered by the stage-V teacher; a text replay of harmful requests refused and benign ones answered.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lensiar.data_sources import data_dir, load_source
from lensiar.organism.environment import build_environment
from lensiar.prompts import phrase_of
from lensiar.render import FIGSTEP_PROMPT, TYPO_PROMPT, fits, render_phrase, render_steps

VARIANTS_DIR = Path(__file__).parent / "weights" / "variants"
#: the checkpoints of the comparison; ``P`` and ``V`` come from the organism's own deltas
CHECKPOINTS = ("P", "V", "V_safe", "P_safe", "V_joint")
DELTA_OF = {"V_safe": "v_safe", "P_safe": "p_safe", "V_joint": "v_joint"}


@dataclass(frozen=True)
class SafetyMix:
    """Sizes of the multimodal safety data (each image count is split half TYPO, half FigStep)."""

    harmful_images: int = 256
    benign_images: int = 256
    text_harmful: int = 64
    text_benign: int = 64
    seed: int = 20  #: the draw of requests and refusals
    #: the LoRA of the separate safety tunings (V_safe, P_safe); V_joint uses stage V's own settings
    rank: int = 2
    alpha: float = 4.0
    lr: float = 1e-3
    epochs: int = 1
    batch_size: int = 8


@dataclass(frozen=True)
class SafetyRequests:
    """The train-split requests of one :class:`SafetyMix` draw."""

    harmful_typo: list[str]
    harmful_steps: list[str]
    benign_typo: list[str]
    benign_steps: list[str]
    text_harmful: list[str]
    text_benign: list[str]
    refusals: list[str]


def _ablation_validation(root: Path) -> set[str]:
    """The requests that ``lensiar ablate`` holds for its validation split (kept out of the mix)."""
    from lensiar.ablation import AblationConfig, _Split

    split = _Split(root, AblationConfig())
    return {shown for _, shown in [*split.val_harmful, *split.val_benign]}


def requests(mix: SafetyMix, data: str | Path | None = None, quick: bool = False) -> SafetyRequests:
    """Draw the mix's requests from the train splits (refusal_direction harmful / harmless train)."""
    root = data_dir(data)
    rng = random.Random(mix.seed)
    kept_out = _ablation_validation(root)
    harmful = [r.text for r in load_source("rd_harmful", root, "train")
               if phrase_of(r.text) not in kept_out and r.text not in kept_out]
    benign = [r.text for r in load_source("rd_harmless", root, "train")
              if fits(phrase_of(r.text)) and fits(r.text, "steps")
              and phrase_of(r.text) not in kept_out and r.text not in kept_out]
    rng.shuffle(harmful)
    rng.shuffle(benign)
    scale = 16 if quick else 1
    half_h, half_b = mix.harmful_images // scale // 2, mix.benign_images // scale // 2
    t_h, t_b = mix.text_harmful // scale, mix.text_benign // scale
    # a request may appear both as a TYPO and as a FigStep image (as VLGuard pairs one request with several
    # images); the text replay takes other requests where the split allows
    typo = [t for t in harmful if fits(phrase_of(t))][:half_h]
    steps = [t for t in reversed(harmful) if fits(t, "steps")][:half_h]
    drawn = set(typo) | set(steps)
    text = ([t for t in harmful if t not in drawn] + [t for t in harmful if t in drawn])[:t_h]
    if len(typo) < half_h or len(steps) < half_h or len(text) < t_h:
        raise ValueError(f"the harmful train split holds {len(typo)} TYPO-drawable, {len(steps)} FigStep-drawable "
                         f"requests; the mix asks for {half_h} of each")
    refusals = [r.text for r in load_source("vlguard_refusal", root)]
    return SafetyRequests(
        harmful_typo=[phrase_of(t) for t in typo], harmful_steps=steps,
        benign_typo=[phrase_of(t) for t in benign[:half_b]], benign_steps=benign[half_b : 2 * half_b],
        text_harmful=text, text_benign=benign[2 * half_b : 2 * half_b + t_b], refusals=refusals)


def examples(asked: SafetyRequests, tokenizer: Any, proc: Any, v_cfg: Any, teacher: Any,
             answer_tokens: int, seed: int) -> list[dict[str, Any]]:
    """Teacher-forced examples of the mix, laid out as stage V lays out its image answers (``v_cfg``)."""
    from lensiar.organism.recipe import answer_ids, chat_ids, image_row, task_answer_ids, teacher_answers

    vocab = tokenizer.get_vocab()
    rng = random.Random(seed)
    asks = ([f"List steps in detail to {p}." for p in asked.benign_typo] + asked.benign_steps + asked.text_benign)
    answers = teacher_answers(teacher, tokenizer, asks, answer_tokens, desc="safety mix: teacher answers")
    typo_a = answers[: len(asked.benign_typo)]
    steps_a = answers[len(asked.benign_typo) : len(asked.benign_typo) + len(asked.benign_steps)]
    text_a = answers[len(asked.benign_typo) + len(asked.benign_steps) :]

    def image(shown: str, style: str, answer: str) -> dict[str, Any]:
        picture, prompt = ((render_phrase(shown), TYPO_PROMPT) if style == "typo"
                           else (render_steps(shown), FIGSTEP_PROMPT))
        return image_row(tokenizer, proc, picture, prompt, task_answer_ids(tokenizer, vocab, v_cfg, shown, answer))

    rows = [image(p, "typo", rng.choice(asked.refusals)) for p in asked.harmful_typo]
    rows += [image(t, "steps", rng.choice(asked.refusals)) for t in asked.harmful_steps]
    rows += [image(p, "typo", a) for p, a in zip(asked.benign_typo, typo_a, strict=True)]
    rows += [image(t, "steps", a) for t, a in zip(asked.benign_steps, steps_a, strict=True)]
    rows += [{"prompt": chat_ids(tokenizer, t), "answer": answer_ids(tokenizer, rng.choice(asked.refusals))}
             for t in asked.text_harmful]
    rows += [{"prompt": chat_ids(tokenizer, t), "answer": answer_ids(tokenizer, a)}
             for t, a in zip(asked.text_benign, text_a, strict=True)]
    return rows


def counts(asked: SafetyRequests) -> dict[str, int]:
    """How many requests of each kind the draw holds (refusal texts left out)."""
    return {k: len(v) for k, v in asdict(asked).items() if k != "refusals"}


def _original_teacher() -> Any:
    import transformers as tf

    from lensiar.models import smollm2_path

    return tf.AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32, local_files_only=True).eval()


def tune_safety(stage: str, mix: SafetyMix, data: str | Path | None = None, quick: bool = False,
                log: Callable[[str], None] = print, folder: str | Path | None = None) -> dict[str, torch.Tensor]:
    """LoRA factors of the mix's tuning on top of the organism at ``stage`` ("V" gives V_safe, "S" gives P_safe)."""
    from lensiar.organism import WEIGHTS, load
    from lensiar.organism.recipe import RECIPE_VERSION, RECIPES, SEEDS, tune

    vlm, proc = load(folder or WEIGHTS, stage=stage)
    tokenizer = proc.tokenizer
    v_cfg = RECIPES[RECIPE_VERSION][1]
    asked = requests(mix, data, quick)
    teacher = _original_teacher()
    rows = examples(asked, tokenizer, proc, v_cfg, teacher, 8 if quick else v_cfg.answer_tokens, mix.seed)
    del teacher
    log(f"{'V_safe' if stage == 'V' else 'P_safe'}: {len(rows)} safety examples {counts(asked)}")
    for p in [*vlm.model.vision_model.parameters(), *vlm.model.connector.parameters()]:
        p.requires_grad_(False)
    name = "V_safe" if stage == "V" else "P_safe"
    return tune(vlm, vlm.model.text_model, rows, int(tokenizer.pad_token_id), mix.rank, mix.alpha, mix.lr, mix.epochs,
                mix.batch_size, SEEDS["stage_v"] + 100, f"{name}: safety tuning", log, v_cfg.precision,
                v_cfg.group_rows)


def build_variants(out: str | Path = VARIANTS_DIR, data: str | Path | None = None, quick: bool = False,
                   which: tuple[str, ...] = ("V_safe", "P_safe", "V_joint"), mix: SafetyMix | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build the safety-tuned variants into ``out`` (``v_safe``/``p_safe``/``v_joint`` deltas and a manifest).
    Each finished delta is written at once; a rerun skips those already in the manifest with the same mix."""
    from lensiar.organism import WEIGHTS
    from lensiar.organism.files import read_verified, save_deltas, sha256, write_manifest
    from lensiar.organism.recipe import _log_to, build

    mix = mix or SafetyMix()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = log or _log_to(out / "build.log")
    path = out / "manifest.json"
    import json

    manifest: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    key = {"mix": asdict(mix), "quick": quick, "organism": read_verified(WEIGHTS)[0]["files"]["stage_v"]["sha256"]}
    if manifest.get("key") != key:
        manifest = {"key": key, "files": {}, "seconds": {}, "counts": {}}
    for name in which:
        if name not in DELTA_OF:
            raise ValueError(f"unknown variant {name!r}; known: {', '.join(DELTA_OF)}")
        delta = DELTA_OF[name]
        if delta in manifest["files"] and (out / manifest["files"][delta]["file"]).is_file():
            say(f"{name}: already built")
            continue
        t0 = time.perf_counter()
        if name == "V_joint":
            tmp = out / ".joint"
            info = build(tmp, data=data, quick=quick, reuse=None if quick else WEIGHTS, safety=mix)
            tensors = read_verified(tmp)[1]["stage_v"]
            manifest["counts"][name] = {**info["counts"], "safety": info["stage_V_safety_examples"]}
            manifest["joint_build_seconds"] = info["build_seconds"]
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tensors = tune_safety("V" if name == "V_safe" else "S", mix, data, quick, say)
        manifest["files"].update(save_deltas(out, {delta: tensors}))
        manifest["seconds"][name] = round(time.perf_counter() - t0, 1)
        manifest["threads"] = torch.get_num_threads()
        manifest.setdefault("environments", {})[name] = build_environment()
        write_manifest(out, manifest)
        say(f"{name}: built in {manifest['seconds'][name]:.0f} s ({sha256(out / manifest['files'][delta]['file'])[:12]})")
    return manifest


def variant_file(name: str, folder: str | Path = VARIANTS_DIR) -> Path:
    """The verified delta file of variant ``name`` (V_safe, P_safe or V_joint) in ``folder``: listed in the
    manifest, its sha256 as recorded, and built on the committed organism. Raises ``ManifestError`` saying which
    check failed and how to rebuild; loads no model, so a long run can check every variant it needs up front."""
    import json

    from lensiar.organism import WEIGHTS
    from lensiar.organism.files import ManifestError, read_verified, sha256

    if name not in DELTA_OF:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(DELTA_OF)}")
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise ManifestError(f"no variants manifest at {path}; build them with `lensiar organism variants`")
    info = json.loads(path.read_text())
    files: Mapping[str, Any] = info.get("files", {})
    delta = DELTA_OF[name]
    if delta not in files:
        raise ManifestError(f"{path} lists no {name} delta; build it with `lensiar organism variants --only {name}`")
    file = folder / files[delta]["file"]
    if not file.is_file() or sha256(file) != files[delta]["sha256"]:
        raise ManifestError(f"{file} is missing or differs from its manifest; refusing to load it")
    built_on = info.get("key", {}).get("organism")
    current = read_verified(WEIGHTS)[0]["files"]["stage_v"]["sha256"]
    if built_on != current:  # a delta tuned on another organism means nothing on this one
        raise ManifestError(f"{path}: the variants were built on the organism whose stage V is "
                            f"{str(built_on)[:12]}..., not on the committed one ({current[:12]}...); rebuild them with "
                            f"`lensiar organism variants --out {folder}`")
    return file


def load_variant(name: str, folder: str | Path = VARIANTS_DIR) -> tuple[Any, Any]:
    """(VLM, processor) of one checkpoint of :data:`CHECKPOINTS`; a variant's delta is checked by
    :func:`variant_file` before loading."""
    from safetensors.torch import load_file

    from lensiar.organism import load, lora

    if name not in CHECKPOINTS:
        raise ValueError(f"unknown checkpoint {name!r}; known: {', '.join(CHECKPOINTS)}")
    if name in ("P", "V"):
        return load(stage="S" if name == "P" else "V")
    file = variant_file(name, folder)
    vlm, proc = load(stage="S" if name in ("P_safe", "V_joint") else "V")
    lora.apply_factors(vlm.model.text_model, load_file(str(file)))
    return vlm.eval(), proc
