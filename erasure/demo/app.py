"""The erasure demo's UI: erase a concept, then see it gone, side by side.

    erasure demo --model minisd --erasures erasures/      # then open http://127.0.0.1:7860

Three tabs. Compare: the base model and an erasure draw the same prompt with the same seeds, and
each image carries the verdict of the model's world (MiniSD: the bundled classifier; Stable
Diffusion: NudeNet, and an image judged nude is blurred on the server, never sent raw). Erase:
train an erasure in the background, one job at a time, with progress and Cancel
(erasure/demo/jobs.py); it trains into a hidden temp folder that is renamed into `--erasures DIR`
only when complete. Erasures: what DIR holds, with the manifests; one click loads one into Compare.
A damaged erasure folder (a corrupt manifest, cut-short or pickle weights, a missing base) is
listed as "name (unreadable: reason)" and answers that reason when chosen; it never stops the
demo from starting, and nothing in it is loaded.

`Demo` (erasure/demo/logic.py) holds the logic (tests drive it without a browser); `build_app`
puts a Gradio UI on it. Nothing leaves the machine: no share link, Gradio's analytics off, no
fonts or scripts from the network, and the app binds to 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no telemetry, no version check

import functools
import logging
import sys
from pathlib import Path

import gradio as gr

from ..errors import UserError
from ..registry import get_method, method_names
from .logic import TABLE_HEADERS, Demo, Limits

__all__ = ["build_app", "launch", "host_warning", "Demo", "Limits"]

log = logging.getLogger("erasure.demo")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


# ----------------------------------------------------------------------------- the UI
def _safe(fn, n_outputs: int):
    """Wrap a UI callback: a UserError (or a bug) becomes one line in the status box (the last
    output) and the other outputs are left as they are; never a traceback on the page."""
    @functools.wraps(fn)  # Gradio reads the signature (a gr.SelectData argument)
    def wrapped(*args):
        try:
            return fn(*args)
        except Exception as e:
            if not isinstance(e, UserError):
                log.exception("demo request failed")
            return (*[gr.skip()] * (n_outputs - 1), error_line(e))
    return wrapped


def error_line(error: Exception) -> str:
    """The status box's one line for a failed request: a UserError's message, else (a bug) its
    type only, the traceback going to the server log."""
    if isinstance(error, UserError):
        message = (str(error).splitlines() or [""])[0]
    else:
        message = f"internal error ({type(error).__name__}); the server log has the details"
    return f"**Error:** {message}"


CSS = "#base-verdict, #erased-verdict {min-height: 3em}"


def build_app(model: str = "minisd", erasures_dir: str | Path = "erasures", limits: Limits | None = None,
              device: str | None = None, demo: Demo | None = None) -> gr.Blocks:
    """The Gradio app (not launched): Compare, Erase and Erasures tabs over a `Demo`."""
    demo = demo or Demo(model, erasures_dir, limits, device)
    lim = demo.limits
    found = demo.erasures()  # a damaged folder is listed with its reason, never a failed start
    first = next((e.name for e in found if not e.error), None)

    with gr.Blocks(title="erasure demo", analytics_enabled=False) as app:
        gr.Markdown(f"# erasure demo\nBase model **{demo.model}**: erase a concept, then see it gone, side by side.")
        with gr.Tabs() as tabs:
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    placeholder = demo.world.example_prompts(None)[0][0]  # the world's own example
                    prompt = gr.Textbox(label="Prompt", placeholder=placeholder, elem_id="prompt", scale=3,
                                        max_length=lim.max_prompt_chars)
                    chosen = gr.Dropdown([(e.label, e.name) for e in found], value=first,  # damaged: with why
                                         label="Erasure (a folder under the erasures folder)",
                                         allow_custom_value=True, elem_id="erasure", scale=2)
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                    steps = gr.Number(demo.sampling["num_inference_steps"], label=f"Steps (at most {lim.max_steps})",
                                      precision=0, elem_id="steps")
                    guidance = gr.Number(demo.sampling["guidance_scale"], label="Guidance", elem_id="guidance")
                    count = gr.Number(1, label=f"Images (at most {lim.max_images})", precision=0, elem_id="count")
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.Markdown(elem_id="compare-status")
                with gr.Row():
                    with gr.Column():
                        base_gallery = gr.Gallery(label="Base model", columns=2, height="auto", elem_id="base-images")
                        base_verdict = gr.Markdown(elem_id="base-verdict")
                    with gr.Column():
                        erased_gallery = gr.Gallery(label="Erased", columns=2, height="auto", elem_id="erased-images")
                        erased_verdict = gr.Markdown(elem_id="erased-verdict")
                examples = gr.Dataset(components=[prompt, gr.Textbox(visible=False)], samples=demo.examples(first),
                                      headers=["Example prompt", "after erasing"], label="Examples", elem_id="examples")

            with gr.Tab("Erase", id="erase"):
                methods = method_names()
                with gr.Row():
                    concept = gr.Dropdown(demo.world.concept_choices(), value=None, label="Concept",  # empty: free text
                                          allow_custom_value=True, elem_id="concept")
                    method = gr.Dropdown([(f"{m}: {get_method(m).description}", m) for m in methods],
                                         value="esd-x", label="Method", elem_id="method")
                method_info = gr.Markdown(demo.describe_method("esd-x"))
                with gr.Row():
                    anchor = gr.Textbox(label="Anchor (what it becomes; empty: the method's default)", elem_id="anchor")
                    train_steps = gr.Number(None, label=f"Steps (empty: the method's default; at most "
                                            f"{lim.max_train_steps})", precision=0, elem_id="train-steps")
                    save_as = gr.Textbox(label="Save as (empty: method-concept)", elem_id="save-as")
                with gr.Row():
                    erase = gr.Button("Erase", variant="primary", elem_id="erase")
                    cancel = gr.Button("Cancel my job", variant="stop", elem_id="cancel")
                erase_status = gr.Markdown(elem_id="erase-status")
                progress = gr.Markdown(demo.queue.status(), elem_id="training")

            with gr.Tab("Erasures", id="erasures"):
                gr.Markdown(f"Erasures under `{demo.root}`. Click a row to load it in Compare.")
                table = gr.Dataframe([e.row() for e in found], headers=TABLE_HEADERS, interactive=False,
                                     elem_id="erasure-table")
                with gr.Row():
                    folder = gr.Textbox(label="Or type an erasure folder (inside the erasures folder)", elem_id="folder")
                    load = gr.Button("Load in Compare", elem_id="load")
                    refresh = gr.Button("Refresh", elem_id="refresh")
                list_status = gr.Markdown(elem_id="erasures-status")
                manifest_view = gr.JSON(label="Manifest")

        job_id = gr.State(None)
        listing = gr.State(tuple(e.row()[0] + e.row()[4] + e.row()[6] for e in found))
        timer = gr.Timer(1.0)

        def run_compare(p, name, s, st, g, n):
            base, erased, notice = demo.compare(p, name, s, st, g, n)
            return (gr.Gallery(value=base.images, label=base.label), base.verdicts(),
                    gr.Gallery(value=erased.images, label=erased.label), erased.verdicts(), notice)

        gr.on([generate.click, prompt.submit], _safe(run_compare, 5), [prompt, chosen, seed, steps, guidance, count],
              [base_gallery, base_verdict, erased_gallery, erased_verdict, status], api_name="generate",
              concurrency_limit=lim.concurrent_generations)
        examples.click(lambda row: row[0], examples, prompt)

        def choose(name):
            """Its examples, and at once, not at Generate, why an unusable erasure cannot be used."""
            try:
                if name:
                    demo.lookup(name)
                notice = ""
            except UserError as e:
                notice = error_line(e)
            return gr.Dataset(samples=demo.examples(name)), notice

        chosen.change(_safe(choose, 2), chosen, [examples, status])
        method.change(_safe(lambda m: (demo.describe_method(m), ""), 2), method, [method_info, erase_status])

        def start(c, m, a, st, name):
            job = demo.submit(c, m, a, st, name)
            return job.id, demo.queue.status(job.id), f"Queued: {job.title}"

        erase.click(_safe(start, 3), [concept, method, anchor, train_steps, save_as], [job_id, progress, erase_status])

        def stop(jid):
            job = demo.queue.cancel(jid)
            if job is None:
                raise UserError("you have no training job to cancel")
            return demo.queue.status(jid), f"Cancelling {job.title}"

        cancel.click(_safe(stop, 2), job_id, [progress, erase_status])

        def rows_and_choices(seen, force=False):
            found = demo.erasures()
            key = tuple(e.row()[0] + e.row()[4] + e.row()[6] for e in found)
            if key == seen and not force:
                return gr.skip(), gr.skip(), seen
            return [e.row() for e in found], gr.Dropdown(choices=[(e.label, e.name) for e in found]), key

        def tick(jid, seen):
            return demo.queue.status(jid), *rows_and_choices(seen)

        timer.tick(tick, [job_id, listing], [progress, table, chosen, listing], queue=False, show_progress="hidden")
        refresh.click(lambda seen: (*rows_and_choices(seen, force=True), ""), listing,
                      [table, chosen, listing, list_status])

        def open_erasure(name):
            ref = demo.lookup(name)
            demo.pipeline(ref)  # load now: the first Generate is then quick
            shown = {k: v for k, v in ref.manifest.items() if k != "changed_tensors"}
            rel = ref.path.relative_to(demo.root.resolve()).as_posix()
            return gr.Dropdown(value=rel), shown, gr.Tabs(selected="compare"), f"Loaded {rel} into Compare"

        def pick(evt: gr.SelectData):
            return open_erasure(evt.row_value[0])

        table.select(_safe(pick, 4), None, [chosen, manifest_view, tabs, list_status])
        load.click(_safe(open_erasure, 4), folder, [chosen, manifest_view, tabs, list_status])
    return app


def host_warning(host: str) -> str | None:
    """What to tell the user when the app will not be private to this machine."""
    if host in LOCAL_HOSTS:
        return None
    return (f"serving on {host}, not only on this machine: anyone who can reach it can generate images and queue "
            "training jobs")


def launch(model: str = "minisd", erasures_dir: str | Path = "erasures", host: str = "127.0.0.1",
           port: int | None = None, limits: Limits | None = None, device: str | None = None,
           block: bool = True) -> gr.Blocks:
    """Build and serve the demo on host:port (127.0.0.1 unless asked; never a public share link).
    `block=False` returns the running app (tests; `app.close()` stops it)."""
    if port is not None and not 1 <= port <= 65535:
        raise UserError(f"--port must be from 1 to 65535 (got {port}); leave it out to take 7860 or the next free one")
    warning = host_warning(host)
    if warning:
        print(f"erasure demo: warning: {warning}", file=sys.stderr)
    limits = limits or Limits()
    app = build_app(model, erasures_dir, limits, device)
    app.queue(max_size=64, default_concurrency_limit=limits.concurrent_generations)
    try:
        app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block, show_error=False,
                   ssr_mode=False, mcp_server=False, enable_monitoring=False, css=CSS, quiet=not block,
                   footer_links=[])
    except OSError as e:  # the port is taken, or the host is no interface of this machine
        raise UserError(f"cannot serve the demo on {host}:{port or 'a free port from 7860'} ({e}); choose another "
                        "--port or --host") from None
    return app
