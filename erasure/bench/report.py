"""The benchmark's HTML report: one self-contained file, images inlined: the verdict and
ranking, a radar per method, one table per dimension, image grids per concept, and every
protocol. It reads results.json's content (scores and ranking from scoring.py)."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import torch

from ..eval.report import _png_data_uri
from ..files import atomic_path
from ..harness import html_section as harness_section
from ..images import grid, load_image
from .settings import BASE, DIMENSIONS, rab_budget_label

TITLES = {"faithfulness": "Faithfulness", "alignment": "Alignment", "pinpoint": "Pinpoint-ness",
          "multilingual": "Multilingual robustness", "attack": "Attack robustness", "efficiency": "Efficiency"}
QUESTIONS = {"faithfulness": "is the target gone, and is image quality kept?",
             "alignment": "do ordinary prompts still follow their text?",
             "pinpoint": "are related but different concepts spared?",
             "multilingual": "is the target gone when asked for in French and German?",
             "attack": "how often do adversarial prompts bring it back? (ASR: lower is better)",
             "efficiency": "what does erasing cost, and how fast does the result sample?"}


# ----------------------------------------------------------------------------- figures


def _figure_png(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    from PIL import Image
    return _png_data_uri(Image.open(io.BytesIO(buf.getvalue())))


def radar(method: str, scores: dict[str, float | None], base: dict[str, float | None] | None) -> str:
    """A six-axis radar of one method's scores (base dashed), as a PNG data URI."""
    import math

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    angles = [2 * math.pi * i / len(DIMENSIONS) for i in range(len(DIMENSIONS))] + [0]
    fig, ax = plt.subplots(figsize=(3.6, 3.6), subplot_kw={"polar": True})
    if base:
        vals = [base[d] if base[d] is not None else float("nan") for d in DIMENSIONS]
        ax.plot(angles, vals + vals[:1], "--", color="grey", linewidth=1, label="base")
    vals = [scores[d] if scores[d] is not None else 0.0 for d in DIMENSIONS]
    ax.plot(angles, vals + vals[:1], color="C0", linewidth=2, label=method)
    ax.fill(angles, vals + vals[:1], color="C0", alpha=0.25)
    ax.set_xticks(angles[:-1], [TITLES[d].split()[0] for d in DIMENSIONS], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0], ["", "0.5", "", "1"], fontsize=7)
    ax.set_title(method, fontsize=11, pad=14)
    ax.legend(loc="lower right", bbox_to_anchor=(1.25, -0.12), fontsize=7, frameon=False)
    fig.tight_layout()
    return _figure_png(fig)


def _sample_grid(results: dict, concept: str, out: Path) -> tuple[str, int, list[dict]] | None:
    """One row per model, one column per sample prompt (same seeds): a JPEG data URI at native
    size (the page doubles 64-pixel images with pixelated scaling), its width, the columns."""
    labels = [BASE, *results["methods"]]
    columns = results["models"][BASE][concept].get("samples", [])
    if not columns:
        return None
    tiles = []
    for label in labels:
        samples = results["models"][label][concept].get("samples", [])
        for i in range(len(columns)):
            path = out / samples[i]["image"] if i < len(samples) else None
            tiles.append(load_image(path) if path is not None and path.exists() else torch.ones(3, 64, 64))
    images = torch.stack([t if t.shape == tiles[0].shape else torch.ones_like(tiles[0]) for t in tiles])
    if images.shape[-1] > 128:  # Stable Diffusion: thumbnails
        images = torch.nn.functional.interpolate(images, size=(128, 128), mode="bilinear", antialias=True)
    g = grid(images, nrow=len(columns), row_labels=labels, label_width=80)
    buf = io.BytesIO()
    g.save(buf, format="JPEG", quality=92)  # a PNG of generated images is ~5x larger
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), g.width, columns


# ----------------------------------------------------------------------------- HTML


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def _flat(values: dict) -> dict[str, Any]:
    """Scalar cells; a breakdown (a dict, e.g. erasure per synonym) becomes one "key value; ..." cell."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out[k] = "; ".join(f"{html.escape(str(kk))} {_fmt(vv)}" for kk, vv in v.items()
                               if not isinstance(vv, (dict, list)))
        elif not isinstance(v, list) and k not in ("note", "memory_rule"):
            out[k] = v
    return out


def _cell(v: Any) -> str:
    return f"<span class='breakdown'>{v}</span>" if isinstance(v, str) and ";" in v else _fmt(v)


def dimension_table(results: dict, dim: str) -> str:
    rows, columns = [], []
    for concept in results["concepts"]:
        for label in [BASE, *results["methods"]]:
            values = _flat(results["models"][label][concept][dim])
            score = results["scores"][label][concept][dim]
            rows.append((label, concept, score, values, results["models"][label][concept][dim].get("note")))
            columns += [k for k in values if k not in columns]
    head = "<tr><th>model</th><th>concept</th><th>score</th>" + "".join(
        f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    body = ""
    for label, concept, score, values, note in rows:
        cls = " class='base'" if label == BASE else ""
        body += (f"<tr{cls}><td>{html.escape(label)}</td><td>{html.escape(concept)}</td><td><b>{_fmt(score)}</b></td>"
                 + "".join(f"<td>{_cell(values.get(c))}</td>" for c in columns) + "</tr>")
        if note:
            body += f"<tr{cls}><td colspan='{len(columns) + 3}' class='note'>{html.escape(note)}</td></tr>"
    return f"<table class='dim'>{head}{body}</table>"


def ranking_table(results: dict) -> str:
    ranking, mean = results["ranking"], results["mean_scores"]
    head = "<tr><th>method</th>" + "".join(f"<th>{TITLES[d]}</th>" for d in DIMENSIONS) + "<th>mean rank</th></tr>"
    body = ""
    for m in sorted(results["methods"], key=lambda m: ranking["mean_rank"][m] or 99):
        cells = ""
        for d in DIMENSIONS:
            v = mean[m][d]
            pos = ranking["order"][d].index(m) + 1 if m in ranking["order"][d] else None
            best = m in ranking["best"][d]
            text = f"{_fmt(v)}" + (f" <small>#{pos}</small>" if pos else "")
            cells += f"<td class='{'best' if best else ''}'>{text}</td>"
        pareto = " <small>(Pareto)</small>" if m in ranking["pareto"] else ""
        body += f"<tr><td>{html.escape(m)}{pareto}</td>{cells}<td>{_fmt(ranking['mean_rank'][m])}</td></tr>"
    base = mean.get(BASE)
    if base:
        body += "<tr class='base'><td>base (not ranked)</td>" + "".join(
            f"<td>{_fmt(base[d])}</td>" for d in DIMENSIONS) + "<td></td></tr>"
    return f"<table class='rank'>{head}{body}</table>"


def write_bench_report(path: str | Path, results: dict, out: Path) -> Path:
    """report.html: verdict and ranking, a radar per method, one table per dimension, image grids
    per concept, and every protocol."""
    mean = results["mean_scores"]
    radars = "".join(f"<img class='radar' alt='radar {html.escape(m)}' src='{radar(m, mean[m], mean.get(BASE))}'>"
                     for m in results["methods"])
    b = results["budget"]
    rab_label = html.escape(rab_budget_label(b["rab_population"], b["rab_generations"], results["quick"]))
    notes = {"attack": f"<p class='q'>{rab_label}.</p>"}  # how strong the attacks were
    tables = "".join(f"<h2 id='{d}'>{TITLES[d]}</h2><p class='q'>{html.escape(QUESTIONS[d])}</p>{notes.get(d, '')}"
                     f"{dimension_table(results, d)}" for d in DIMENSIONS)
    grids = ""
    for concept in results["concepts"]:
        made = _sample_grid(results, concept, out)
        if made:
            uri, width, columns = made
            prompts = "".join(f"<li><b>{html.escape(c['column'])}</b>: {html.escape(c['prompt'][:140])}</li>"
                              for c in columns)
            grids += (f"<figure><img class='grid' style='width:{2 * width}px' alt='samples {html.escape(concept)}' "
                      f"src='{uri}'><figcaption>'{html.escape(concept)}':"
                      f" one row per model (same seeds); columns, left to right:<ol>{prompts}</ol></figcaption></figure>")
    protocol = ""
    for concept, proto in results["protocol"].items():
        protocol += f"<h3>{html.escape(concept)}</h3><ul>" + "".join(
            f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in proto.items()) + "</ul>"
    suites = ""
    if any("suites" in results["models"][BASE][c] for c in results["concepts"]):
        suites = "<h2>Extra suites</h2><pre>" + html.escape(json.dumps(
            {m: {c: results["models"][m][c].get("suites") for c in results["concepts"]} for m in results["models"]},
            indent=1)) + "</pre>"
    budget = ", ".join(f"{k} {v}" for k, v in results["budget"].items())
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>erasure bench</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;margin:6px 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}}th{{background:#f3f3f3}}
td:first-child,td:nth-child(2){{text-align:left}}tr.base td{{color:#666;font-style:italic}}td.best{{background:#dff3df;
font-weight:bold}}td.note{{text-align:left;color:#666}}img.radar{{margin:4px}}p.q{{color:#555;margin-top:-8px}}
figure{{margin:12px 0}}figcaption{{font-size:12px}}.verdict{{font-size:18px;background:#fff7d6;padding:8px}}
.breakdown{{font-size:11px;white-space:nowrap}}img.grid{{image-rendering:pixelated;max-width:100%}}</style>
</head><body>
<h1>Concept-erasure benchmark</h1>
<p>Six dimensions after HUB (Moon et al., <i>Holistic Unlearning Benchmark</i>, ICCV 2025). Model
<code>{html.escape(str(results['model']))}</code>; methods {html.escape(', '.join(results['methods']))};
concepts {html.escape(', '.join(results['concepts']))}; {'--quick' if results['quick'] else 'full'} budget
({html.escape(budget)}); seed {results['seed']}; erasure {html.escape(results['erasure_version'])}.</p>
<p class="budget">{rab_label}.</p>
<p>Command: <code>{html.escape(results.get('command') or '')}</code></p>
<p class="verdict">{html.escape(results['ranking']['verdict'])}</p>
<h2>Ranking</h2><p class="q">Mean score over concepts per dimension (1 = best possible), rank within the run;
green = best on that dimension. The efficiency score is relative to the run's other methods.</p>
{ranking_table(results)}
<h2>Radar per method</h2>{radars}
{tables}
<h2>Samples</h2>{grids}
{suites}
<h2>Protocol</h2>{protocol}
{harness_section(results.get('harness'))}
</body></html>"""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(doc, encoding="utf-8")
    return path
