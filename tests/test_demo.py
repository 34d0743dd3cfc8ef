"""The Gradio demo (erasure/demo): its logic without a browser (default run), three clients at
once through gradio_client, and the UI in headless Chromium driven by Playwright (slow: they
train a real ESD-x erasure of circle on MiniSD).

    python -m pytest tests/test_demo.py               # logic, training hook, three clients
    python -m pytest -m slow tests/test_demo.py       # + the browser tests
    DEMO_SCREENSHOT=docs/demo_screenshot.png python -m pytest -m slow tests/test_demo.py -k compare

The slow tests train their ESD-x circle erasure (about 2 minutes); ERASURE_DEMO_CIRCLE=FOLDER
reuses an existing one instead.
"""
import contextlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gradio")
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword is deprecated)")  # gradio's pandas use

import erasure  # noqa: E402
from erasure import UserError  # noqa: E402
from erasure.demo.app import host_warning, launch  # noqa: E402
from erasure.demo.jobs import TrainingQueue  # noqa: E402
from erasure.demo.logic import Demo, Limits, find_erasures, show  # noqa: E402
from erasure.worlds import get_world  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def erasures(tmp_path_factory) -> Path:
    """An erasures folder: a 2-step ESD-x erasure of circle (quick, not a real erasure), one
    with a corrupt manifest, one without weights, and a training run's hidden temp folder."""
    root = tmp_path_factory.mktemp("erasures")
    erasure.train(root / "quick", concept="circle", method="esd-x", base_model="minisd", steps=2, checkpoint_every=0)
    (root / "broken").mkdir()
    (root / "broken" / "erasure_config.json").write_text("{not json")
    shutil.copytree(root / "quick", root / "noweights")
    (root / "noweights" / "erasure_model.safetensors").unlink()
    shutil.copytree(root / "quick", root / ".tmp-half-1")
    return root


@pytest.fixture(scope="module")
def demo(erasures) -> Demo:
    return Demo("minisd", erasures, Limits(max_steps=10, max_images=3, max_train_steps=50))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(erasures):
    """The app served on a free local port (what `erasure demo` runs); yields its URL."""
    port = free_port()
    app = launch("minisd", erasures, port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        app.close()


@pytest.fixture(scope="module")
def server(erasures):
    with served(erasures) as url:
        yield url


# ----------------------------------------------------------------------------- the training hook
def test_train_callback_reports_every_step_and_cancels(tiny_sd_dir, tmp_path):
    settings = {"concept": "circle", "base_model": str(tiny_sd_dir), "lr": 1e-3, "checkpoint_every": 0}
    seen = []
    erasure.train(tmp_path / "done", steps=2, callback=lambda step, total, logs: seen.append((step, total, sorted(logs))),
                  **settings)
    assert seen == [(1, 2, ["loss"]), (2, 2, ["loss"])]
    assert (tmp_path / "done" / "erasure_config.json").exists()
    with pytest.raises(erasure.TrainingCancelled, match="cancelled at step 2 of 5"):
        erasure.train(tmp_path / "cut", steps=5, callback=lambda step, total, logs: step < 2, **settings)
    assert not (tmp_path / "cut" / "erasure_config.json").exists()


# ----------------------------------------------------------------------------- the demo's logic
def test_compare_draws_both_models_with_the_same_seeds_and_judges_each(demo):
    base, erased, notice = demo.compare("a red circle", "quick", seed=3, steps=2, guidance=5, n_images=2)
    assert notice == ""
    for side in (base, erased):
        assert len(side.images) == 2 and all(img.size == (256, 256) for img, _ in side.images)
        lines = side.verdicts().splitlines()
        assert [line.split(":")[0] for line in lines] == ["- seed 3", "- seed 4"]
        assert all(" · " in line and "%" in line for line in lines)  # object · colour · style with confidence
    assert "quick" in erased.label and "minisd" in base.label


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": "   "}, "prompt is empty"),
    ({"steps": 500}, "steps must be a whole number from 1 to 10"),
    ({"n_images": 9}, "images must be a whole number from 1 to 3"),
    ({"seed": -1}, "seed must be"),
    ({"guidance": 99}, "guidance must be a number from 0 to 30"),
    ({"steps": 2.5}, "steps must be a whole number"),
    ({"seed": float("nan")}, "seed must be"),
    ({"erasure_name": ""}, "choose an erasure"),
    ({"erasure_name": "missing"}, "no erasure folder 'missing'"),
    ({"erasure_name": "broken"}, "corrupt"),
    ({"erasure_name": "noweights"}, "no erasure_model.safetensors"),
    ({"erasure_name": "../outside"}, "outside the erasures folder"),
    ({"erasure_name": "/tmp"}, "outside the erasures folder"),
])
def test_bad_input_is_one_line_naming_the_fix(demo, kwargs, message):
    args = {"prompt": "a red circle", "erasure_name": "quick", "seed": 0, "steps": 2, "n_images": 1, **kwargs}
    with pytest.raises(UserError, match=message) as e:
        demo.compare(**args)
    assert "\n" not in str(e.value)


def test_a_symlink_out_of_the_erasures_folder_is_refused(demo, erasures, tmp_path):
    shutil.copytree(erasures / "quick", tmp_path / "elsewhere")
    (erasures / "link").symlink_to(tmp_path / "elsewhere")
    try:
        with pytest.raises(UserError, match="outside"):
            demo.lookup("link")
    finally:
        (erasures / "link").unlink()


def test_a_long_prompt_is_cut_at_the_token_limit_with_a_notice(demo):
    prompt, notice = demo.check_prompt("a red circle " * 40)
    assert len(demo.tokenizer(prompt).input_ids) <= demo.tokenizer.model_max_length
    assert prompt.startswith("a red circle a red") and "cut to the text encoder's limit of 77 tokens" in notice
    assert demo.check_prompt("  a red   circle ") == ("a red circle", "")


def test_the_listing_shows_manifests_and_the_broken_ones(demo):
    rows = {e.name: e.row() for e in find_erasures(demo.root)}
    assert set(rows) == {"quick", "broken", "noweights"}  # the hidden temp folder is not an erasure
    _, method, concept, base, created, size, status = rows["quick"]
    assert (method, concept, base, status) == ("esd-x", "circle", "minisd", "ok")
    assert created[:2] == "20" and size.endswith("MB")
    assert "corrupt" in rows["broken"][-1] and "safetensors" in rows["noweights"][-1]


def test_erase_settings_are_checked_before_queueing(demo):
    with pytest.raises(UserError, match="concept is empty"):
        demo.submit("", "esd-x")
    with pytest.raises(UserError, match="MiniSD does not know 'dog'"):
        demo.submit("dog", "esd-x")
    with pytest.raises(UserError, match="unknown method 'nope'"):
        demo.submit("circle", "nope")
    with pytest.raises(UserError, match="training steps must be a whole number from 1 to 50"):
        demo.submit("circle", "esd-x", steps=400)
    with pytest.raises(UserError, match="over this demo's 50"):
        demo.submit("circle", "esd-x")  # MiniSD's ESD-x default is 300 steps
    with pytest.raises(UserError, match="not a plain folder name"):
        demo.submit("circle", "esd-x", steps=2, name="../up")
    assert demo.queue.jobs == []
    assert "esd-x" in demo.describe_method("esd-x") and "steps" in demo.describe_method("esd-x")


def fake_train(out, callback, steps=3, **settings):
    """Writes the files as it goes, as a real run's checkpoints would."""
    out = Path(out)
    out.mkdir(parents=True)
    for step in range(1, steps + 1):
        (out / "erasure_model.safetensors").write_text("partial")
        time.sleep(0.05)
        if callback(step, steps, {"loss": 1.0 / step}) is False:
            raise erasure.TrainingCancelled(f"cancelled at step {step}")
    (out / "erasure_config.json").write_text("{}")


def wait_for(predicate, timeout=20.0):
    end = time.time() + timeout
    while not predicate():
        assert time.time() < end, "timed out"
        time.sleep(0.02)


def test_the_queue_trains_one_at_a_time_into_a_temp_folder_and_cancel_leaves_nothing(tmp_path):
    gate = threading.Event()

    def train(out, callback, **settings):
        gate.wait(10)
        fake_train(out, callback, **settings)

    queue = TrainingQueue(tmp_path, max_waiting=2, train=train)
    first = queue.submit("first", {"method": "esd-x", "concept": "circle", "steps": 40})
    wait_for(lambda: first.state == "training")
    second = queue.submit("second", {"method": "esd-x", "concept": "star", "steps": 2})
    third = queue.submit("third", {"method": "esd-x", "concept": "heart", "steps": 2})
    assert (second.state, third.state) == ("waiting", "waiting")
    with pytest.raises(UserError, match="queue is full"):
        queue.submit("fourth", {"method": "esd-x", "concept": "cross"})
    with pytest.raises(UserError, match="exists or is queued"):
        queue.submit("second", {"method": "esd-x", "concept": "cross"})
    status = queue.status(mine=second.id)
    assert "**Training:**" in status and "loading the model" in status and "2. esd-x 'heart'" in status
    assert "1. esd-x 'star' → second (yours)" in status
    queue.cancel(third.id)
    assert third.state == "cancelled"
    gate.set()
    wait_for(lambda: first.step >= 3)
    assert "step" in first.progress() and "loss" in first.progress() and "left" in first.progress()
    assert [p.name for p in tmp_path.iterdir()] == [".tmp-first-1"]  # nothing visible while it trains
    queue.cancel(first.id)
    wait_for(lambda: second.state == "done")
    assert first.state == "cancelled" and "nothing was saved" in first.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["second"]  # the cancelled run left nothing
    assert "done" in queue.status(mine=second.id)


def test_submitted_erasures_are_named_method_concept_numbered_when_taken(demo, monkeypatch):
    monkeypatch.setattr(demo, "queue", TrainingQueue(demo.root, max_waiting=4, train=fake_train))
    first = demo.submit("star", "esd-x", steps=3)
    wait_for(lambda: first.state == "done")
    second = demo.submit(" Star ", "esd-x", anchor="a heart", steps=3)
    assert (first.name, second.name) == ("esd-x-star", "esd-x-star-2")
    assert second.settings == {"concept": "Star", "method": "esd-x", "anchor": "a heart", "base_model": "minisd",
                               "checkpoint_every": 0, "steps": 3}
    wait_for(lambda: second.state == "done")
    with pytest.raises(UserError, match="'esd-x-star' exists"):
        demo.submit("star", "esd-x", steps=3, name="esd-x-star")
    for name in ("esd-x-star", "esd-x-star-2"):
        shutil.rmtree(demo.root / name)


def test_a_failing_run_is_reported_in_one_line_and_cleaned_up(tmp_path):
    def train(out, callback, **settings):
        Path(out).mkdir()
        raise RuntimeError("boom\nsecond line")

    queue = TrainingQueue(tmp_path, max_waiting=2, train=train)
    job = queue.submit("x", {"method": "esd-x", "concept": "circle"})
    wait_for(lambda: job.state == "failed")
    assert job.message == "RuntimeError: boom" and list(tmp_path.iterdir()) == []


def test_judging_stable_diffusion_images_blurs_the_nude_ones(monkeypatch):
    from erasure.judges import nudenet

    images = torch.rand(2, 3, 64, 64)
    monkeypatch.setattr(nudenet, "detect", lambda x: [[{"class": "BUTTOCKS_EXPOSED", "score": 0.8, "box": [0] * 4}],
                                                      [{"class": "FACE_FEMALE", "score": 0.9, "box": [0] * 4}]])
    (v1, blur1), (v2, blur2) = get_world("stable-diffusion").verdicts(images)
    assert v1.startswith("nude: BUTTOCKS_EXPOSED 0.80") and blur1 and (v2, blur2) == ("not nude", False)

    def missing(x):
        raise UserError(nudenet.INSTALL_HINT)

    monkeypatch.setattr(nudenet, "detect", missing)
    assert all(blur and "not judged" in v for v, blur in get_world("stable-diffusion").verdicts(images))
    sharp = torch.zeros(3, 64, 64)
    sharp[:, ::2] = 1  # stripes: blurred, they must be gone
    raw, blurred = show(sharp), show(sharp, blur=True)
    assert raw.size == blurred.size == (256, 256)
    assert np.asarray(blurred, dtype=float).std() < np.asarray(raw, dtype=float).std() / 10


def test_examples_name_prompts_to_erase_and_to_keep():
    erase, keep = get_world("mini").example_prompts("circle")
    assert all("circle" in p for p in erase) and not any("circle" in p for p in keep)
    erase, keep = get_world("mini").example_prompts("orange")
    assert erase[0] == "an orange star" and all("orange" not in p for p in keep)
    erase, keep = get_world("stable-diffusion").example_prompts("nudity")
    assert "nude" in erase[0] and len(keep) == 2


def test_cli_refuses_a_missing_model_and_warns_about_other_interfaces(erasures, capsys):
    from erasure.cli import run

    assert run(["demo", "--model", "/no/such/model", "--erasures", str(erasures)]) == 2
    err = capsys.readouterr().err
    assert "no model folder at '/no/such/model'" in err and len(err.strip().splitlines()) == 1
    assert run(["demo", "--model", str(erasures / "quick"), "--erasures", str(erasures)]) == 2
    assert "is an erasure; --model takes its base model" in capsys.readouterr().err
    from erasure.demo.__main__ import run as python_m_erasure_demo

    assert python_m_erasure_demo(["--model", "/no/such/model", "--erasures", str(erasures)]) == 2
    assert capsys.readouterr().err.startswith("erasure demo: error: no model folder at '/no/such/model'")
    assert host_warning("127.0.0.1") is None and "0.0.0.0" in host_warning("0.0.0.0")


def test_three_clients_generating_at_once_all_get_their_images(server):
    from gradio_client import Client

    results, errors = {}, []

    def one(k):
        try:
            client = Client(server, verbose=False)
            results[k] = client.predict("a red circle", "quick", k, 2, 5.0, 1, api_name="/generate")
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and sorted(results) == [0, 1, 2]
    for k, (base, base_verdict, erased, erased_verdict, status) in results.items():
        base, erased = base["value"], erased["value"]  # gallery updates: images and the model's label
        assert len(base) == len(erased) == 1 and Path(base[0]["image"]).exists() and Path(erased[0]["image"]).exists()
        assert base_verdict.startswith(f"- seed {k}:") and erased_verdict.startswith(f"- seed {k}:") and not status


# ----------------------------------------------------------------------------- in the browser (slow)
@pytest.fixture(scope="session")
def circle_erasures(tmp_path_factory) -> Path:
    """An erasures folder holding a real ESD-x erasure of circle: trained here (MiniSD defaults,
    ~2 minutes on a 2-core CPU), or copied from $ERASURE_DEMO_CIRCLE, an existing one."""
    root = tmp_path_factory.mktemp("demo-erasures")
    if os.environ.get("ERASURE_DEMO_CIRCLE"):
        shutil.copytree(os.environ["ERASURE_DEMO_CIRCLE"], root / "esd-x-circle")
        assert erasure.read_manifest(root / "esd-x-circle")["concept"] == "circle"
    else:
        erasure.train(root / "esd-x-circle", concept="circle", method="esd-x", base_model="minisd")
    (root / "broken").mkdir()
    (root / "broken" / "erasure_config.json").write_text(json.dumps({"format": "erasure/1"}))
    return root


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (set CHROMIUM=...)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="session")
def circle_server(circle_erasures):
    with served(circle_erasures) as url:
        yield url


def open_page(browser, url, hosts=None):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    if hosts is not None:
        page.on("request", lambda r: hosts.add(r.url.split("/")[2].split(":")[0]))
    page.goto(url)
    page.wait_for_selector("#generate")
    return page


def generate(page, prompt, until, where="#compare-status", timeout=60_000):
    """Type `prompt`, click Generate, and wait until `where` shows `until` (each step of a test
    waits for a text the step before did not show)."""
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#generate").click()
    page.wait_for_function("([sel, text]) => document.querySelector(sel).innerText.includes(text)",
                           arg=[where, until], timeout=timeout)


@pytest.mark.slow
def test_browser_compare_shows_circle_erased(browser, circle_server, tmp_path):
    hosts = set()
    page = open_page(browser, circle_server, hosts)
    generate(page, "a red circle", "seed 0", "#erased-verdict")
    base, erased = page.inner_text("#base-verdict"), page.inner_text("#erased-verdict")
    assert "seed 0: circle" in base
    assert "seed 0:" in erased and "circle" not in erased
    shot = Path(os.environ.get("DEMO_SCREENSHOT") or tmp_path / "demo.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    assert hosts == {"127.0.0.1"}, f"the page fetched from {hosts - {'127.0.0.1'}}"  # nothing leaves the machine


@pytest.mark.slow
def test_browser_bad_input_shows_one_line_and_the_app_keeps_serving(browser, circle_server):
    page = open_page(browser, circle_server)
    status = page.locator("#compare-status")

    generate(page, "", "Error: the prompt is empty")
    page.locator("#steps input").fill("500")
    generate(page, "a red circle", "Error: steps must be a whole number from 1 to 50")
    page.locator("#steps input").fill("5")
    for typed, message in [("../outside", "outside the erasures folder"), ("missing", "no erasure folder 'missing'"),
                           ("broken", "not an erasure manifest")]:
        page.locator("#erasure input").fill(typed)
        page.locator("#erasure input").press("Enter")
        generate(page, "a red circle", message)
        assert status.inner_text().count("Error") == 1
    page.get_by_role("tab", name="Erasures").click()
    page.locator("#folder textarea").fill("/etc")
    page.locator("#load").click()
    page.wait_for_function("document.querySelector('#erasures-status').innerText.includes('Error')")
    assert "outside the erasures folder" in page.inner_text("#erasures-status")
    assert "Traceback" not in page.content()
    page.get_by_role("tab", name="Compare").click()  # still serving
    page.locator("#erasure input").fill("esd-x-circle")
    page.locator("#erasure input").press("Enter")
    generate(page, "a blue square", "seed 0", "#erased-verdict")
    assert "seed 0: square" in page.inner_text("#base-verdict")
    page.wait_for_function("!document.querySelector('#compare-status').innerText.includes('Error')")


@pytest.mark.slow
def test_browser_erase_tab_trains_with_progress_and_lists_the_result(browser, circle_server, circle_erasures):
    page = open_page(browser, circle_server)
    page.get_by_role("tab", name="Erase").click()
    page.locator("#concept input").fill("star")
    page.locator("#concept input").press("Enter")
    page.locator("#train-steps input").fill("40")
    page.locator("#erase").click()
    progress = page.locator("#training")
    seen = set()
    end = time.time() + 180
    while time.time() < end and not (circle_erasures / "esd-x-star").exists():
        text = progress.inner_text()
        if "step " in text:
            seen.add(int(text.split("step ")[1].split(" /")[0]))
        time.sleep(0.2)
    assert len(seen) >= 2, f"the progress never moved: {seen}"
    page.wait_for_function("document.querySelector('#training').innerText.includes('done')", timeout=20_000)
    page.get_by_role("tab", name="Erasures").click()
    page.wait_for_function("document.querySelector('#erasure-table').innerText.includes('esd-x-star')",
                           timeout=20_000)

    # a second run, cancelled: it leaves nothing in the erasures folder
    page.get_by_role("tab", name="Erase").click()
    page.locator("#save-as input, #save-as textarea").fill("cancelled-run")
    page.locator("#train-steps input").fill("50")
    page.locator("#erase").click()
    page.wait_for_function("document.querySelector('#training').innerText.includes('step')", timeout=60_000)
    page.locator("#cancel").click()
    page.wait_for_function("document.querySelector('#training').innerText.includes('cancelled')", timeout=30_000)
    assert not (circle_erasures / "cancelled-run").exists()
    assert not [p for p in circle_erasures.iterdir() if p.name.startswith(".tmp")]

    # one click on the row loads it into Compare
    page.get_by_role("tab", name="Erasures").click()
    page.get_by_role("gridcell", name="esd-x-star").first.click()
    page.wait_for_function("document.querySelector('#erasures-status').innerText.includes('Loaded esd-x-star')",
                           timeout=30_000)
    assert page.locator("#erasure input").input_value() == "esd-x-star"
