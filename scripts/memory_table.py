"""Print docs/howto-real-vlms.md's memory table: what lensiar holds for real VLMs, from their published configs.

Per model: the weights in bf16 (published parameter count x 2 bytes), what ``lens.bake`` adds (a full copy),
what ``sample_activations`` keeps per 256 samples (fp32 ``hook_z`` of every head + ``resid`` of every layer at
one position: ``256 x n_layers x (n_heads x d_head + d_model) x 4`` bytes, on the CPU) and what an all-position
capture of one family of hooks (``resid_post`` at every layer) holds for one 700-token image prompt
(``700 x n_layers x d_model x 4`` bytes). Figures are arithmetic on config numbers, not measurements.

    python scripts/memory_table.py
"""

from __future__ import annotations

from dataclasses import dataclass

GB, MB = 1e9, 1e6


@dataclass(frozen=True)
class Config:
    """The text backbone numbers of a published config (``text_config``) and the model's parameter count."""

    name: str
    params_b: float  # billions, whole VLM
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int


CONFIGS = [
    Config("SmolVLM-256M-Instruct", 0.256, 30, 576, 9, 64),
    Config("Qwen2-VL-2B-Instruct", 2.21, 28, 1536, 12, 128),
    Config("LLaVA-1.5-7B", 7.06, 32, 4096, 32, 128),
    Config("Qwen2.5-VL-7B-Instruct", 8.29, 28, 3584, 28, 128),
    Config("Idefics3-8B-Llama3", 8.46, 32, 4096, 32, 128),
    Config("Llama-3.2-11B-Vision", 10.7, 40, 4096, 32, 128),
    Config("LLaVA-1.5-13B", 13.4, 40, 5120, 40, 128),
    Config("Mistral-Small-3.1-24B", 24.0, 40, 5120, 32, 128),
    Config("Gemma-3-27B-it", 27.4, 62, 5376, 32, 128),
    Config("Qwen2.5-VL-72B-Instruct", 73.4, 80, 8192, 64, 128),
]


def table(samples: int = 256, tokens: int = 700) -> str:
    """The markdown table (see the module docstring)."""
    lines = ["| model | layers x heads x d_head, d_model | weights bf16 | + bake copy | activations per "
             f"{samples} samples (CPU) | all-position resid_post, one {tokens}-token prompt |", "|---|---|---|---|---|---|"]
    for c in CONFIGS:
        weights = c.params_b * 1e9 * 2 / GB
        acts = samples * c.n_layers * (c.n_heads * c.d_head + c.d_model) * 4 / MB
        seq = tokens * c.n_layers * c.d_model * 4 / MB
        lines.append(f"| {c.name} | {c.n_layers} x {c.n_heads} x {c.d_head}, {c.d_model} | {weights:.1f} GB | "
                     f"{weights:.1f} GB | {acts:.0f} MB | {seq:.0f} MB |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
