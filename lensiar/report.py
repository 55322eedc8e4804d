"""Head-attribution reports: PNG heatmaps, a markdown summary and one self-contained HTML file.

The HTML embeds its images as data URIs and has no scripts or external links, so it opens offline.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from lensiar.atomic import atomic_text


def head_heatmap(values: Tensor, path: Path, title: str, label: str, diverging: bool = False,
                 marks: Sequence[tuple[int, int]] = ()) -> Path:
    """``values [layers, heads]`` as a heatmap PNG; ``marks`` are outlined (e.g. the top heads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = values.detach().float().numpy()
    fig, ax = plt.subplots(figsize=(4.2, 6.5))
    if diverging:
        bound = float(abs(data).max()) or 1.0
        im = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound)
    else:
        im = ax.imshow(data, aspect="auto", cmap="viridis")
    for layer, head in marks:
        ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.4))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(rows: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    if not rows:
        return "", ""
    cols = list(rows[0])
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in cols) + "</tr>" for r in rows)
    return "\n".join(md), f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(out: str | Path, title: str, figures: Mapping[str, Path], tables: Mapping[str, Sequence[Mapping[str, Any]]],
                 metadata: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``report.md`` and ``report.html`` (images inlined) into ``out``; returns their paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", ""]
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for caption, path in figures.items():
        md += [f"## {caption}", "", f"![{caption}]({Path(path).name})", ""]
        data = base64.b64encode(Path(path).read_bytes()).decode()
        parts.append(f"<h2>{html.escape(caption)}</h2><img alt=\"{html.escape(caption)}\" "
                     f"src=\"data:image/png;base64,{data}\">")
    for caption, rows in tables.items():
        table_md, table_html = _table(rows)
        md += [f"## {caption}", "", table_md, ""]
        parts.append(f"<h2>{html.escape(caption)}</h2>{table_html}")
    meta = json.dumps(metadata, indent=2, default=str)
    md += ["## Metadata", "", "```json", meta, "```"]
    parts.append(f"<h2>Metadata</h2><pre>{html.escape(meta)}</pre>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 8px;font-size:90%}"
             "img{max-width:100%}pre{background:#f4f4f4;padding:1em;overflow:auto}")
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    atomic_text(folder / "report.md", "\n".join(md) + "\n")
    atomic_text(folder / "report.html", page)
    return {"markdown": folder / "report.md", "html": folder / "report.html"}


def head_report(lens: Any, out: str | Path, harmful_text: Sequence[Any], harmful_image: Sequence[Any],
                ranking: Any, bundle: Any = None, alpha_rows: Sequence[Mapping[str, Any]] = (), top_k: int = 10
                ) -> dict[str, Path]:
    """Probe log-loss (the ranking) and accuracy, direct attribution (on the image prompts) and text->image patching heatmaps, the
    top-heads table, ASR-vs-alpha rows and the bundle's metadata, as PNG + markdown + HTML."""
    from lensiar.attribution import direct_attribution, patch_heads

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    top = ranking.top(top_k)
    attribution = direct_attribution(lens, list(harmful_image))
    patching = patch_heads(lens, list(harmful_text), list(harmful_image))
    figures = {
        "Probe log-loss (held out; ranks the heads, boxes = top heads)": head_heatmap(
            ranking.loss.clamp_min(1e-6).log10(), folder / "probe_loss.png", "held-out probe log-loss (log10)",
            "log10(nats per sample)", marks=top),
        "Probe accuracy (held out)": head_heatmap(ranking.accuracy, folder / "probe_accuracy.png",
                                                  "held-out probe accuracy", "accuracy", marks=top),
        "Direct attribution to the refusal score (image prompts)": head_heatmap(
            attribution, folder / "attribution.png", "direct attribution", "logit difference", diverging=True),
        "Patching z from the text run into the image run": head_heatmap(
            patching, folder / "patching.png", "text -> image patching effect", "refusal score change", diverging=True),
    }
    rows = [{"rank": i + 1, "layer": layer, "head": head, "probe_log_loss": round(float(ranking.loss[layer, head]), 4),
             "probe_accuracy": round(float(ranking.accuracy[layer, head]), 3),
             "attribution": round(float(attribution[layer, head]), 4), "patching": round(float(patching[layer, head]), 4)}
            for i, (layer, head) in enumerate(top)]
    tables: dict[str, Sequence[Mapping[str, Any]]] = {"Top heads": rows}
    if alpha_rows:
        tables["ASR vs alpha (validation)"] = alpha_rows
    meta: dict[str, Any] = bundle.metadata() if bundle is not None else {}
    meta |= {"n_pairs": len(harmful_text)}
    return write_report(folder, "lensiar head report", figures, tables, meta)
