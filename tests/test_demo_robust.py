"""The demo over damaged erasure folders and bad input: it starts, lists what it can read, marks
each damaged folder with its reason, loads nothing unsafe, binds to 127.0.0.1 only, and answers
every bad input with one line (never a traceback, never a huge allocation).

Everything runs on the tiny MiniSD-world model (tests/conftest.py) through the functions the
Gradio app calls; no server is started (Gradio's own `launch` is replaced to see its arguments).
"""
import json
import pickle
import shutil
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword is deprecated)")

import erasure  # noqa: E402
from erasure import UserError  # noqa: E402
from erasure.demo.logic import Demo, Limits  # noqa: E402

MARKER = "unpickled.txt"  # written if the pickle below is ever loaded


class _Trap:
    """Unpickling this touches a file: proof that the demo never loads a pickle."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (Path(self.path),)


def _edit_manifest(folder: Path, **changes) -> None:
    cfg = folder / "erasure_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), **changes}))


# damaged folder -> what its reason says (the listing and a request both say it)
DAMAGED = {
    "bad-json": "erasure_config.json is corrupt (Expecting property name",
    "list-manifest": "erasure_config.json holds a JSON list, not an erasure manifest",
    "binary-manifest": "erasure_config.json is corrupt (not UTF-8 text)",
    "truncated": "erasure_model.safetensors is not a complete safetensors file",
    "weights-only": "it has erasure_model.safetensors but no erasure_config.json",
    "pickle": "its weights are a pickle file (erasure_model.bin), which the demo never loads",
    "missing-base": "its base model cannot be found (no model folder at '/no/such/base')",
    "other-base": "it was trained on minisd, not this demo's model",
    "no-concept": "erasure_config.json names no concept",
    "runs/old/format-only": "erasure_config.json is not an erasure manifest (missing method",
}


@pytest.fixture(scope="module")
def root(tiny_mini_dir, tmp_path_factory) -> Path:
    """An erasures folder: one good 1-step erasure of the tiny model, and each damaged kind."""
    root = tmp_path_factory.mktemp("robust")
    good = root / "good"
    erasure.train(good, concept="circle", method="esd-x", base_model=str(tiny_mini_dir), steps=1, checkpoint_every=0)

    def copy(name):
        shutil.copytree(good, root / name)
        return root / name

    (copy("bad-json") / "erasure_config.json").write_text('{"format": "erasure/1", oops')
    (copy("list-manifest") / "erasure_config.json").write_text("[1, 2, 3]")
    (copy("binary-manifest") / "erasure_config.json").write_bytes(b"\xff\xfe\x00garbage\x81")
    weights = copy("truncated") / "erasure_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (copy("weights-only") / "erasure_config.json").unlink()
    folder = copy("pickle")
    (folder / "erasure_model.safetensors").unlink()
    (folder / "erasure_model.bin").write_bytes(pickle.dumps(_Trap(root / MARKER)))
    _edit_manifest(copy("missing-base"), base_model="/no/such/base", base_model_path="/no/such/base")
    _edit_manifest(copy("other-base"), base_model="minisd")
    _edit_manifest(copy("no-concept"), concept=None)
    (root / "runs" / "old").mkdir(parents=True)
    (root / "runs" / "old" / "format-only").mkdir()
    (root / "runs" / "old" / "format-only" / "erasure_config.json").write_text(json.dumps({"format": "erasure/1"}))
    folder = copy("wrong-dtype")  # passes every check without a model; fails when its tensors load
    manifest = json.loads((folder / "erasure_config.json").read_text())
    _edit_manifest(folder, tensor_dtypes={k: "bfloat16" for k in manifest["changed_tensors"]})
    (root / "notes").mkdir()  # a plain folder: not an erasure, not listed
    return root


@pytest.fixture(scope="module")
def demo(root, tiny_mini_dir) -> Demo:
    return Demo(str(tiny_mini_dir), root, Limits(max_steps=3, max_images=2, max_train_steps=5))


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and len(message) < 1000, message
    return message


# ----------------------------------------------------------------------------- damaged folders
def test_the_listing_keeps_the_good_erasures_and_marks_each_damaged_one_with_its_reason(demo, root):
    found = {e.name: e for e in demo.erasures()}
    assert set(found) == {"good", "wrong-dtype", *DAMAGED}  # not notes/, not runs/ itself
    assert found["good"].error == "" and found["good"].label == "good"
    assert found["good"].row()[1:3] == ["esd-x", "circle"] and found["good"].row()[-1] == "ok"
    for name, reason in DAMAGED.items():
        info = found[name]
        assert info.error.startswith(reason), (name, info.error)
        assert info.label == f"{name} (unreadable: {info.error})" and "\n" not in info.label
        assert info.row()[-1] == info.error
    assert found["other-base"].row()[1:4] == ["esd-x", "circle", "minisd"]  # readable, only not for this base
    assert dict((v, k) for k, v in demo.choices())["truncated"].startswith("truncated (unreadable: ")
    assert not (root / MARKER).exists()


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_choosing_a_damaged_erasure_answers_its_reason_in_one_line(demo, root, name):
    with pytest.raises(UserError) as e:
        demo.compare("a red circle", name, steps=1)
    assert one_line(e).startswith(f"cannot use erasure '{name}': {DAMAGED[name]}")
    assert demo.concept_of(name) is None and demo.examples(name)  # the menu's examples still come
    assert not (root / MARKER).exists()


def test_an_erasure_that_fails_only_when_loaded_is_one_line_and_the_good_one_draws(demo):
    with pytest.raises(UserError) as e:
        demo.pipeline(demo.lookup("wrong-dtype"))  # what loading it in the Erasures tab does
    assert one_line(e).startswith("cannot use erasure 'wrong-dtype': the weights file's dtypes do not match")
    base, erased, notice = demo.compare("a red circle " * 8000, "good", seed=1, steps=1, n_images=1)  # 104k chars
    assert len(base.images) == len(erased.images) == 1 and "cut to the text encoder's limit" in notice


def test_the_demo_starts_over_damaged_erasures_listing_them_and_binds_to_localhost_only(root, tiny_mini_dir,
                                                                                     monkeypatch, capsys):
    import gradio as gr

    from erasure.cli import run

    served = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: served.update(app=self, **kwargs))
    assert run(["demo", "--model", str(tiny_mini_dir), "--erasures", str(root)]) == 0
    assert served["server_name"] == "127.0.0.1" and served["share"] is False  # this machine only
    assert "warning" not in capsys.readouterr().err
    menu = next(b for b in served["app"].blocks.values() if getattr(b, "elem_id", None) == "erasure")
    labels = dict((value, label) for label, value in menu.choices)
    assert menu.value == "good" and labels["good"] == "good"
    assert all(labels[name].startswith(f"{name} (unreadable: {reason}") for name, reason in DAMAGED.items())
    # choosing one in the menu answers its reason in the Compare status line at once
    choose = next(f for f in served["app"].fns.values() if f.name == "choose")
    assert [getattr(b, "elem_id", None) for b in choose.outputs] == ["examples", "compare-status"]
    _, line = choose.fn("pickle")
    assert line == "**Error:** cannot use erasure 'pickle': " + DAMAGED["pickle"] + \
        "; convert it to erasure_model.safetensors (erasure import) or re-run erasure train"
    assert choose.fn("good")[1] == ""
    assert not (root / MARKER).exists()


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": ""}, "the prompt is empty"),
    ({"prompt": None}, "the prompt is empty"),
    ({"prompt": " \n\t " * 50_000}, "the prompt is empty"),
    ({"prompt": 42}, "the prompt must be text (got int)"),
    ({"n_images": 0}, "images must be a whole number from 1 to 2"),
    ({"n_images": 10**6}, "images must be a whole number from 1 to 2"),
    ({"n_images": 10**400}, "images must be a whole number from 1 to 2"),
    ({"n_images": [1, 2]}, "images must be a whole number"),
    ({"steps": float("nan")}, "steps must be a whole number from 1 to 3"),
    ({"steps": float("inf")}, "steps must be a whole number from 1 to 3"),
    ({"steps": -2}, "steps must be a whole number from 1 to 3"),
    ({"steps": "many"}, "steps must be a whole number from 1 to 3"),
    ({"guidance": float("nan")}, "guidance must be a number from 0 to 30"),
    ({"guidance": float("-inf")}, "guidance must be a number from 0 to 30"),
    ({"guidance": -1}, "guidance must be a number from 0 to 30"),
    ({"guidance": ""}, "guidance is empty"),
    ({"seed": "abc"}, "seed must be a whole number from 0 to 2147483647"),
    ({"seed": 2**31}, "seed must be a whole number"),
    ({"seed": 1.5}, "seed must be a whole number"),
    ({"seed": None}, "seed is empty"),
    ({"seed": "9" * 100_000}, "seed must be a whole number"),
    ({"seed": 10**5000}, "seed must be a whole number"),  # past float's range and str()'s digit limit
    ({"erasure_name": None}, "choose an erasure"),
    ({"erasure_name": 7}, "the erasure must be text (got int)"),
    ({"erasure_name": "bad\x00name"}, "'bad\\x00name' is not a folder name"),  # the NUL shown, not swallowed
    ({"erasure_name": "x" * 100_000}, "the erasure is 100000 characters long, over this demo's 1000"),
    ({"erasure_name": "x" * 900}, "is not a folder name"),
    ({"erasure_name": "~no-such-user-here/x"}, "is not a folder name"),
    ({"erasure_name": "notes"}, "cannot use erasure 'notes': it has no erasure_config.json"),
    ({"erasure_name": "runs"}, "cannot use erasure 'runs': it has no erasure_config.json"),
])
def test_each_bad_compare_input_is_one_line(demo, kwargs, message):
    args = {"prompt": "a red circle", "erasure_name": "good", "seed": 0, "steps": 1, "n_images": 1, **kwargs}
    with pytest.raises(UserError) as e:
        demo.compare(**args)
    assert message in one_line(e)


def test_a_huge_prompt_is_cut_before_it_costs_anything(demo):
    prompt, notice = demo.check_prompt("x" * 100_000)
    assert len(prompt) <= demo.limits.max_prompt_chars and "cut to the text encoder's limit of 77 tokens" in notice
    assert len(demo.tokenizer(prompt).input_ids) <= demo.tokenizer.model_max_length
    assert len(notice.splitlines()) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"concept": None}, "the concept is empty"),
    ({"concept": "dog"}, "does not know 'dog'"),
    ({"concept": "c" * 100_000}, "the concept is 100000 characters long, over this demo's 200"),
    ({"concept": ["circle"]}, "the concept must be text (got list)"),
    ({"method": None}, "unknown method ''"),
    ({"method": "nope"}, "unknown method 'nope'"),
    ({"method": 3}, "the method must be text (got int)"),
    ({"anchor": {"a": 1}}, "the anchor must be text (got dict)"),
    ({"steps": float("nan")}, "training steps must be a whole number from 1 to 5"),
    ({"steps": float("inf")}, "training steps must be a whole number from 1 to 5"),
    ({"steps": -1}, "training steps must be a whole number from 1 to 5"),
    ({"steps": 10**400}, "training steps must be a whole number from 1 to 5"),
    ({"name": "../up"}, "not a plain folder name"),
    ({"name": 5}, "the name must be text (got int)"),
])
def test_each_bad_erase_input_is_one_line_and_queues_nothing(demo, kwargs, message):
    args = {"concept": "circle", "method": "esd-x", "steps": 2, **kwargs}
    with pytest.raises(UserError) as e:
        demo.submit(**args)
    assert message in one_line(e)
    assert demo.queue.jobs == []


def test_a_bad_method_description_and_a_bug_in_a_callback_are_one_line(demo):
    import gradio as gr

    from erasure.demo.app import _safe

    with pytest.raises(UserError, match="unknown method 'nope'"):
        demo.describe_method("nope")
    with pytest.raises(UserError, match="the method must be text"):
        demo.describe_method(1)
    skip, line = _safe(lambda: 1 / 0, 2)()
    assert skip == gr.skip() and line.startswith("**Error:** internal error (ZeroDivisionError)") and "\n" not in line
    skip, line = _safe(lambda: demo.compare("", "good"), 2)()
    assert line == "**Error:** the prompt is empty; type what to draw, e.g. 'a red circle'"


def test_an_erasures_path_that_is_a_file_is_one_line(tiny_mini_dir, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError) as e:
        Demo(str(tiny_mini_dir), tmp_path / "file")
    assert one_line(e).startswith(f"--erasures {tmp_path / 'file'} cannot be used as the erasures folder (File exists)")
