"""The report a person reads: one self-contained HTML file (images inlined) with the summary
table (and the change against a compared base), bars per prompt group, and image grids: for
each group, the first prompt's images from every model side by side."""
from __future__ import annotations


import base64
import html
import io
from pathlib import Path

import torch

from ..images import grid
from ..files import atomic_path
from ..harness import html_section as harness_section

# the number a group's bar shows, by metric (first one present wins)
GROUP_KEYS = ["object_acc", "nude", "clip_score"]


def _png_data_uri(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape(str(v))


def _group_means(result: dict, key: str) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for row in result["per_prompt"]:
        if row.get(key) is not None:
            sums.setdefault(row["group"] or "all", []).append(row[key])
    return {g: sum(v) / len(v) for g, v in sums.items()}


def _bars(results: list[dict], labels: list[str], key: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({g for r in results for g in _group_means(r, key)})
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(groups) * len(results)), 3.2))
    width = 0.8 / len(results)
    for j, (r, label) in enumerate(zip(results, labels)):
        means = _group_means(r, key)
        ax.bar([i + j * width for i in range(len(groups))], [means.get(g, 0) for g in groups], width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups, rotation=20)
    ax.set_ylabel(key)
    ax.set_ylim(0, 1 if key != "clip_score" else None)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    from PIL import Image
    return Image.open(io.BytesIO(buf.getvalue()))


def write_report(path: str | Path, results: list[dict], labels: list[str], images: list[torch.Tensor], rows) -> Path:
    """results/images: one per model (the erased model first, then the compared base)."""
    ipp = results[0]["images_per_prompt"]
    keys = [k for k, v in results[0]["summary"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    head = "".join(f"<th>{html.escape(label)}</th>" for label in labels)
    if len(results) == 2:
        head += "<th>change</th>"
    body = ""
    for k in keys:
        vals = [r["summary"].get(k) for r in results]
        cells = "".join(f"<td>{_fmt(v)}</td>" for v in vals)
        if len(vals) == 2 and all(isinstance(v, float) for v in vals):
            cells += f"<td>{vals[0] - vals[1]:+.3f}</td>"
        elif len(vals) == 2:
            cells += "<td></td>"
        body += f"<tr><th>{html.escape(k)}</th>{cells}</tr>"

    sections = []
    key = next((k for k in GROUP_KEYS if any(row.get(k) is not None for row in results[0]["per_prompt"])), None)
    if key:
        chart = _bars(results, labels, key)
        if chart is not None:
            sections.append(f"<h2>{html.escape(key)} per prompt group</h2><img src='{_png_data_uri(chart)}'>")

    firsts: dict[str, int] = {}
    for i, row in enumerate(rows):
        firsts.setdefault(row.group or "all", i)
    grids = []
    for group, i in list(firsts.items())[:12]:
        tiles = torch.cat([imgs[i * ipp:(i + 1) * ipp] for imgs in images])
        scale = 2 if tiles.shape[-1] <= 128 else 1
        g = grid(tiles, nrow=ipp, scale=scale, row_labels=labels, label_width=110)
        grids.append(f"<figure><img src='{_png_data_uri(g)}'><figcaption>{html.escape(group)}: "
                     f"{html.escape(rows[i].prompt[:120])}</figcaption></figure>")
    sections.append("<h2>Samples (one prompt per group; a row per model, same seeds)</h2>" + "".join(grids))

    protocol = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(str(out.get('protocol', {})))}</li>"
                       for name, out in results[0]["metrics"].items())
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>erasure report: {html.escape(results[0]['suite'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}figure{{display:inline-block;margin:8px}}
figcaption{{font-size:12px;max-width:420px}}</style></head><body>
<h1>Suite <code>{html.escape(results[0]['suite'])}</code></h1>
<p>{html.escape(results[0]['suite_description'])}. {results[0]['n_prompts']} prompts x {ipp} images;
sampling {html.escape(str(results[0]['sampling']))}; erasure {html.escape(results[0]['erasure_version'])}.</p>
<h2>Summary</h2><table><tr><th>metric</th>{head}</tr>{body}</table>
{''.join(sections)}
<h2>Protocol</h2><ul>{protocol}</ul>
{harness_section(results[0].get('harness'))}
<p>Models: {'; '.join(html.escape(f'{label} = {r["model"]}') for label, r in zip(labels, results))}</p>
</body></html>"""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(doc, encoding="utf-8")
    return path
