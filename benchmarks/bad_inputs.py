"""Bad inputs, tried as a careless user or an attacker would: every command of the CLI, the Python
API's public functions and the demo, on a tiny random-weight Stable Diffusion built offline
(tests/tiny.py). Prints one row per case: where, the case, what it ended with (the exit code, or the
exception the Python API raised) and the first line it said. A case passes when the CLI exits 0, 2
or 130 (Ctrl-C) with no traceback, the Python API raises UserError or succeeds, and nothing was
written outside the case's own folder.

    python benchmarks/bad_inputs.py [--out docs/experiments/bad_inputs.md]

About three minutes on two CPU cores.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from erasure.cli import run  # noqa: E402
from erasure.errors import UserError  # noqa: E402

NOISE = ("Loading", "Writing", "Failed to load CPU", "generate:", "esd-x")


def first_line(text: str) -> str:
    """The line that answers: the error line if any, else the last line that is not progress noise."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines()
             if ln.strip() and not ln.strip().startswith(NOISE) and "it/s]" not in ln and "s/it]" not in ln]
    return next((ln for ln in lines if ln.startswith("erasure:") or ln.startswith("Traceback")),
                lines[-1] if lines else "")


def cli_case(argv: list[str]) -> tuple[object, str, bool]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = run(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        except BaseException as e:  # noqa: BLE001 (a case that escapes is what this script looks for)
            code = f"raised {type(e).__name__}"
            err.write("Traceback: " + "".join(traceback.format_exception_only(type(e), e)))
    text = err.getvalue() + out.getvalue()
    return code, first_line(err.getvalue() or out.getvalue()), code in (0, 2) and "Traceback" not in text


def python_case(call) -> tuple[object, str, bool]:
    try:
        call()
    except UserError as e:
        return "UserError", str(e).splitlines()[0], "\n" not in str(e)
    except Exception as e:  # noqa: BLE001
        return f"raised {type(e).__name__}", str(e).splitlines()[0] if str(e) else "", False
    return "ok", "", True


def ctrl_c_case(argv: list[str], wait_for: str, folder: Path) -> tuple[object, str, bool]:
    """Run `erasure ARGV` in a process, send it SIGINT once `wait_for` shows in its output."""
    log = folder / "ctrl_c.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "erasure", *argv], stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 180
        while wait_for not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=180)
    text = log.read_text()
    return code, first_line(text), code == 130 and "Traceback" not in text


def build(root: Path) -> dict[str, Path]:
    """The files the cases use: a tiny base, an erasure trained from it and damaged copies."""
    from tiny import build_tiny_pipeline

    base = root / "base"
    build_tiny_pipeline().save_pretrained(base, safe_serialization=True)
    good = root / "good"
    assert run(["train", "--concept", "circle", "--model", str(base), "--steps", "1", "--out", str(good),
                "--no-grid"]) == 0

    def variant(name, damage):
        folder = root / name
        shutil.copytree(good, folder)
        damage(folder)
        return folder

    weights, manifest = "erasure_model.safetensors", "erasure_config.json"
    f = {"base": base, "good": good,
         "trunc": variant("trunc", lambda d: (d / weights).write_bytes((d / weights).read_bytes()[:100])),
         "jlist": variant("jlist", lambda d: (d / manifest).write_text("[1, 2]")),
         "jbad": variant("jbad", lambda d: (d / manifest).write_text("{not json")),
         "noweights": variant("noweights", lambda d: (d / weights).unlink()),
         "nobase": variant("nobase", lambda d: (d / manifest).write_text(json.dumps(
             {**json.loads((d / manifest).read_text()), "base_model": "nowhere", "base_model_path": "/nowhere"}))),
         "nanw": variant("nanw", lambda d: save_file({k: torch.full_like(v, float("nan"))
                                                     for k, v in load_file(d / weights).items()}, d / weights)),
         "afile": root / "afile", "held": root / "other", "pkl": root / "pickled", "erasures": root / "erasures"}
    shutil.copytree(base, f["pkl"])
    next((f["pkl"] / "unet").glob("*.safetensors")).unlink()
    torch.save({}, f["pkl"] / "unet" / "diffusion_pytorch_model.bin")
    f["afile"].write_text("x")
    f["held"].mkdir()
    (f["held"] / "notes.txt").write_text("x")
    (root / "bin.csv").write_bytes(os.urandom(256))
    (root / "bom.csv").write_bytes("\ufeffprompt\na circle\n".encode())
    (root / "empty.csv").write_text("")
    (root / "nocol.csv").write_text("text\na circle\n")
    (root / "p.csv").write_text("prompt\na circle\n")
    (root / "steps_abc.yaml").write_text("method: esd-x\nconcept: circle\nsteps: abc\n")
    (root / "tag.yaml").write_text(f"!!python/object/apply:os.system ['touch {root}/pwned']\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "bad.yaml").write_text("method: [esd-x\n")
    (root / "method_true.yaml").write_text("method: true\nconcept: circle\n")
    (root / "concept_false.yaml").write_text("concept: false\n")
    torch.save({"a": torch.zeros(1)}, root / "p.pt")
    (root / "bin.safetensors").write_bytes(os.urandom(200))
    # the demo's erasures folder: one good erasure, one truncated, one whose manifest is a list
    f["erasures"].mkdir()
    for name in ("good", "trunc", "jlist"):
        shutil.copytree(f[name], f["erasures"] / name)
    # a torn checkpoint under --out as a run killed while committing leaves it (checkpoint.prev beside)
    torn = root / "torn"
    from erasure.cli import _train_config, build_parser
    from erasure.registry import get_method
    args = ["train", "--concept", "circle", "--model", str(base), "--steps", "3", "--out", str(torn), "--no-grid"]
    config = _train_config(build_parser().parse_args(args))
    get_method(config.method).trainer_cls(config).train(torn, stop_after=1)
    shutil.copytree(torn / "checkpoint", root / "step1")
    get_method(config.method).trainer_cls(config).train(torn, resume=True, stop_after=2)
    shutil.move(root / "step1", torn / "checkpoint.prev")
    (torn / "checkpoint" / "state.json").unlink()
    f["torn"] = torn
    return f


def cli_cases(r: Path, f: dict[str, Path]) -> list[tuple[str, list[str]]]:
    B, P = str(f["base"]), str(r / "p.csv")
    train = ["train", "--concept", "circle", "--model", B]
    gen = ["generate", "--model", B, "--prompt", "a circle"]
    att = ["attack", "--model", B, "--suite", "mini-objects", "--concept", "circle"]
    return [
        ("train, unknown method", ["train", "--method", "nope", "--concept", "circle", "--model", B, "--out", f"{r}/o1"]),
        ("train, unknown concept on MiniSD", ["train", "--concept", "zebra-unicorn", "--out", f"{r}/o2"]),
        ("train, steps 0", [*train, "--steps", "0", "--out", f"{r}/o3"]),
        ("train, steps -5", [*train, "--steps", "-5", "--out", f"{r}/o3"]),
        ("train, lr nan", [*train, "--lr", "nan", "--steps", "1", "--out", f"{r}/o4"]),
        ("train, lr inf (diverges at once)", [*train, "--lr", "inf", "--steps", "2", "--out", f"{r}/o5", "--no-grid"]),
        ("train, lr -1", [*train, "--lr", "-1", "--steps", "1", "--out", f"{r}/o6"]),
        ("train, --out is a file", [*train, "--steps", "1", "--out", str(f["afile"])]),
        ("train, --out holds other files", [*train, "--steps", "1", "--out", str(f["held"])]),
        ("train, --out under /proc", [*train, "--steps", "1", "--out", "/proc/erasure-x"]),
        ("train, --out already an erasure", [*train, "--steps", "1", "--out", str(f["good"])]),
        ("train, --resume with no checkpoint", [*train, "--steps", "1", "--resume", "--out", f"{r}/o7"]),
        ("train, --resume from a torn checkpoint (previous one used)",
         [*train, "--steps", "3", "--resume", "--no-grid", "--out", str(f["torn"])]),
        ("train, config steps: abc", ["train", "--config", f"{r}/steps_abc.yaml", "--model", B, "--out", f"{r}/o8"]),
        ("train, config with a python tag", ["train", "--config", f"{r}/tag.yaml", "--model", B, "--out", f"{r}/o9"]),
        ("train, config is a YAML list", ["train", "--config", f"{r}/list.yaml", "--model", B, "--out", f"{r}/o10"]),
        ("train, config malformed YAML", ["train", "--config", f"{r}/bad.yaml", "--model", B, "--out", f"{r}/o11"]),
        ("train, config missing", ["train", "--config", f"{r}/none.yaml", "--model", B, "--out", f"{r}/o12"]),
        ("train, config method: true", ["train", "--config", f"{r}/method_true.yaml", "--model", B, "--out", f"{r}/o12"]),
        ("train, config concept: false", ["train", "--config", f"{r}/concept_false.yaml", "--model", B, "--out", f"{r}/o12"]),
        ("train, config is binary", ["train", "--config", f"{r}/bin.csv", "--model", B, "--out", f"{r}/o12"]),
        ("train, model missing", ["train", "--concept", "circle", "--model", f"{r}/none", "--out", f"{r}/o13"]),
        ("train, model is a file", ["train", "--concept", "circle", "--model", str(f["afile"]), "--out", f"{r}/o14"]),
        ("train, base with a pickle UNet", ["train", "--concept", "circle", "--model", str(f["pkl"]), "--steps", "1",
                                            "--out", f"{r}/o15"]),
        ("train, --set (no such flag)", [*train, "--set", "bogus=1", "--out", f"{r}/o16"]),
        ("train, bad --save-dtype", [*train, "--save-dtype", "int8", "--out", f"{r}/o18"]),
        ("train, hub id not in the cache", ["train", "--concept", "circle", "--model", "nobody/nothing", "--out", f"{r}/o19"]),
        ("train, 6000-character concept", ["train", "--concept", "circle" * 1000, "--model", B, "--out", f"{r}/o20"]),
        ("train, --optimizer bogus", [*train, "--optimizer", "bogus", "--out", f"{r}/o21"]),
        ("train, --dtype float16", [*train, "--dtype", "float16", "--out", f"{r}/o22"]),
        ("train, --ema 1", [*train, "--ema", "1", "--out", f"{r}/o23"]),
        ("train, --steps abc", [*train, "--steps", "abc", "--out", f"{r}/o24"]),
        ("generate, no prompt", ["generate", "--model", B, "--out", f"{r}/g1"]),
        ("generate, empty prompt", ["generate", "--model", B, "--prompt", "  ", "--out", f"{r}/g1"]),
        ("generate, pickle base", ["generate", "--model", str(f["pkl"]), "--prompt", "a circle", "--out", f"{r}/g2"]),
        ("generate, truncated erasure", ["generate", "--model", str(f["trunc"]), "--prompt", "a circle", "--steps", "1",
                                         "--out", f"{r}/g3"]),
        ("generate, manifest is a JSON list", ["generate", "--model", str(f["jlist"]), "--prompt", "a", "--out", f"{r}/g4"]),
        ("generate, manifest invalid JSON", ["generate", "--model", str(f["jbad"]), "--prompt", "a", "--out", f"{r}/g5"]),
        ("generate, erasure without weights", ["generate", "--model", str(f["noweights"]), "--prompt", "a",
                                               "--out", f"{r}/g6"]),
        ("generate, erasure whose base is gone", ["generate", "--model", str(f["nobase"]), "--prompt", "a",
                                                  "--out", f"{r}/g7"]),
        ("generate, erasure of NaN weights", ["generate", "--model", str(f["nanw"]), "--prompt", "a", "--steps", "1",
                                              "--out", f"{r}/g7b"]),
        ("generate, --num-images 100000", [*gen, "--num-images", "100000", "--out", f"{r}/g8"]),
        ("generate, --num-images 0", [*gen, "--num-images", "0", "--out", f"{r}/g9"]),
        ("generate, --guidance nan", [*gen, "--guidance", "nan", "--steps", "1", "--out", f"{r}/g10"]),
        ("generate, --guidance 1e9", [*gen, "--guidance", "1e9", "--steps", "1", "--out", f"{r}/g10"]),
        ("generate, --steps 0", [*gen, "--steps", "0", "--out", f"{r}/g11"]),
        ("generate, --steps 100000", [*gen, "--steps", "100000", "--out", f"{r}/g11"]),
        ("generate, --device tpu9", [*gen, "--device", "tpu9", "--out", f"{r}/g12"]),
        ("generate, --device cuda without a GPU", [*gen, "--device", "cuda", "--out", f"{r}/g13"]),
        ("generate, 105000-character prompt", ["generate", "--model", B, "--prompt", "circle " * 15000, "--steps", "1",
                                                "--out", f"{r}/g14"]),
        ("generate, --out is a file", [*gen, "--steps", "1", "--out", str(f["afile"])]),
        ("eval, binary prompts file", ["eval", "--model", B, "--prompts", f"{r}/bin.csv", "--steps", "1",
                                       "--json", f"{r}/e1.json"]),
        ("eval, CSV with a byte-order mark (read)", ["eval", "--model", B, "--prompts", f"{r}/bom.csv", "--steps", "1",
                                                      "--limit", "1", "--images-per-prompt", "1", "--json", f"{r}/e2.json"]),
        ("eval, empty CSV", ["eval", "--model", B, "--prompts", f"{r}/empty.csv", "--json", f"{r}/e3.json"]),
        ("eval, CSV without a prompt column", ["eval", "--model", B, "--prompts", f"{r}/nocol.csv", "--json", f"{r}/e4.json"]),
        ("eval, missing prompts file", ["eval", "--model", B, "--prompts", f"{r}/none.csv", "--json", f"{r}/e5.json"]),
        ("eval, unknown suite", ["eval", "--model", B, "--suite", "nope", "--json", f"{r}/e6.json"]),
        ("eval, unknown metric", ["eval", "--model", B, "--prompts", P, "--metrics", "bogus", "--json", f"{r}/e7.json"]),
        ("eval, both --suite and --prompts", ["eval", "--model", B, "--suite", "mini", "--prompts", P, "--json", f"{r}/e0.json"]),
        ("eval, --limit -1", ["eval", "--model", B, "--prompts", P, "--limit", "-1", "--json", f"{r}/e8.json"]),
        ("eval, --images-per-prompt 0", ["eval", "--model", B, "--prompts", P, "--images-per-prompt", "0",
                                         "--json", f"{r}/e9.json"]),
        ("eval, --harness missing file", ["eval", "--harness", f"{r}/none.json", "--json", f"{r}/h1.json"]),
        ("eval, --harness not JSON", ["eval", "--harness", f"{r}/bin.csv", "--json", f"{r}/h2.json"]),
        ("attack, unknown attack", ["attack", "--attack", "nope", "--model", B, "--suite", "mini-objects",
                                    "--json", f"{r}/a1.json"]),
        ("attack, --budget 2", [*att, "--budget", "2", "--json", f"{r}/a2.json"]),
        ("attack, --budget -1", [*att, "--budget", "-1", "--json", f"{r}/a3.json"]),
        ("attack, --budget nan", [*att, "--budget", "nan", "--json", f"{r}/a4.json"]),
        ("attack, unknown concept", ["attack", "--model", B, "--suite", "mini-objects", "--concept", "zebra-unicorn",
                                     "--json", f"{r}/a5.json"]),
        ("attack, --set bad", [*att, "--set", "x", "--json", f"{r}/a6.json"]),
        ("export, not an erasure", ["export", B, "--out", f"{r}/x1"]),
        ("export, lora without --rank", ["export", str(f["good"]), "--format", "lora", "--out", f"{r}/x2.safetensors"]),
        ("export, --rank 0", ["export", str(f["good"]), "--format", "lora", "--rank", "0", "--out", f"{r}/x3.safetensors"]),
        ("export, --out not empty", ["export", str(f["good"]), "--out", str(f["held"])]),
        ("export, --out is a file", ["export", str(f["good"]), "--out", str(f["afile"])]),
        ("export, truncated erasure", ["export", str(f["trunc"]), "--out", f"{r}/x4"]),
        ("export, --rank with the folder format", ["export", str(f["good"]), "--rank", "4", "--out", f"{r}/x5"]),
        ("export-text-encoder, a UNet erasure", ["export-text-encoder", str(f["good"]), "--out", f"{r}/x6"]),
        ("import, a pickle", ["import", f"{r}/p.pt", "--base", B, "--out", f"{r}/i1"]),
        ("import, missing source", ["import", f"{r}/none.safetensors", "--base", B, "--out", f"{r}/i2"]),
        ("import, random bytes named .safetensors", ["import", f"{r}/bin.safetensors", "--base", B, "--out", f"{r}/i3"]),
        ("import, base is an erasure", ["import", str(f["good"] / "erasure_model.safetensors"), "--base", str(f["good"]),
                                        "--out", f"{r}/i4"]),
        ("import, --out is a file", ["import", str(f["good"] / "erasure_model.safetensors"), "--base", B,
                                     "--out", str(f["afile"])]),
        ("bench, unknown method", ["bench", "--methods", "nope", "--concepts", "circle", "--out", f"{r}/b1"]),
        ("bench, bad --budget key", ["bench", "--methods", "esd-x", "--concepts", "circle", "--budget", "nope=1",
                                     "--out", f"{r}/b2"]),
        ("bench, --out is a file", ["bench", "--quick", "--methods", "esd-x", "--concepts", "circle",
                                    "--out", str(f["afile"])]),
        ("bench, --out under /proc", ["bench", "--quick", "--methods", "esd-x", "--concepts", "circle",
                                      "--out", "/proc/erasure-bench"]),
        ("bench, --out holds other files", ["bench", "--quick", "--methods", "esd-x", "--concepts", "circle",
                                            "--out", str(f["held"])]),
        ("bench, a method named twice", ["bench", "--methods", "esd-x,esd-x", "--concepts", "circle", "--out", f"{r}/b3"]),
        ("demo, --erasures is a file", ["demo", "--model", B, "--erasures", str(f["afile"])]),
        ("demo, --port 99999", ["demo", "--model", B, "--port", "99999"]),
        ("ls, an extra argument", ["ls", "nope"]),
        ("no command", []),
        ("unknown command", ["frobnicate"]),
    ]


def python_cases(r: Path, f: dict[str, Path]) -> list[tuple[str, object]]:
    import erasure
    from erasure import ErasedPipeline, load_erasure, load_pipeline, read_manifest, resolve_model
    from erasure.demo.logic import Demo, Limits

    B = str(f["base"])
    cases = [
        ("train(), unknown setting", lambda: erasure.train(out=str(r / "p1"), concept="circle", base_model=B, bogus=1)),
        ("train(), steps as a list", lambda: erasure.train(out=str(r / "p2"), concept="circle", base_model=B, steps=[1])),
        ("train(), concept None", lambda: erasure.train(out=str(r / "p3"), concept=None, base_model=B)),
        ('get_method("nope")', lambda: erasure.get_method("nope")),
        ("ErasedPipeline.from_pretrained, trust_remote_code", lambda: ErasedPipeline.from_pretrained(
            str(f["good"]), trust_remote_code=True)),
        ("ErasedPipeline.from_pretrained, truncated erasure", lambda: ErasedPipeline.from_pretrained(str(f["trunc"]))),
        ("ErasedPipeline.from_pretrained, a base (not an erasure)", lambda: ErasedPipeline.from_pretrained(B)),
        ("load_erasure, onto a pipeline of another base", lambda: load_erasure(
            load_pipeline(resolve_model("minisd")), str(f["good"]))),
        ("load_erasure, a missing folder", lambda: load_erasure(load_pipeline(resolve_model(B)), str(r / "none"))),
        ("read_manifest, a JSON list", lambda: read_manifest(f["jlist"])),
        ("resolve_model, a pickle base", lambda: load_pipeline(resolve_model(str(f["pkl"])))),
    ]
    holder = {}

    def demo():
        holder["demo"] = Demo(B, f["erasures"], Limits(max_steps=2, max_images=1, max_train_steps=2))
        names = [e.label for e in holder["demo"].erasures()]
        if not any("unreadable" in n for n in names):
            raise AssertionError(f"the damaged erasures are not marked: {names}")

    cases += [
        ("demo, starts over an erasures folder with damaged erasures (listed, marked)", demo),
        ("demo, compare with a 100k-character prompt", lambda: holder["demo"].compare("a" * 100000, "good", steps=1)),
        ("demo, compare with an erasure that is not there", lambda: holder["demo"].compare("a circle", "../../etc", steps=1)),
        ("demo, compare with the truncated erasure", lambda: holder["demo"].compare("a circle", "trunc", steps=1)),
        ("demo, compare with steps 1e9", lambda: holder["demo"].compare("a circle", "good", steps=1e9)),
        ("demo, compare with guidance nan", lambda: holder["demo"].compare("a circle", "good", steps=1, guidance=float("nan"))),
        ("demo, compare with seed -1", lambda: holder["demo"].compare("a circle", "good", steps=1, seed=-1)),
        ("demo, submit an unknown method", lambda: holder["demo"].submit("circle", "nope")),
        ("demo, submit 1e9 steps", lambda: holder["demo"].submit("circle", "esd-x", steps=10**9)),
        ("demo, submit a name with a path", lambda: holder["demo"].submit("circle", "esd-x", steps=1, name="../x")),
    ]
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="erasure-bad-inputs-"))
    files = build(root)
    rows = []

    def record(where, label, result):
        code, line, ok = result
        line = line.replace(str(root), "…").replace("|", "/")[:170]
        rows.append((where, label, code, line, ok))
        print(f"| {where} | {label} | {code} | {line} | {'ok' if ok else 'FAIL'} |", flush=True)

    print("| where | case | ended | first line | |\n|---|---|---|---|---|")
    for label, argv in cli_cases(root, files):
        record("CLI", label, cli_case(argv))
    base = str(files["base"])
    record("CLI", "generate, Ctrl-C while sampling",
           ctrl_c_case(["generate", "--model", base, "--prompt", "a circle", "--steps", "500", "--num-images", "64",
                        "--out", str(root / "cc1")], "generate", root))
    record("CLI", "train, Ctrl-C while training (checkpoint saved)",
           ctrl_c_case(["train", "--concept", "circle", "--model", base, "--steps", "100000", "--checkpoint-every", "1",
                        "--no-grid", "--out", str(root / "cc2")], "checkpoint:", root))
    stopped_at = json.loads((root / "cc2" / "checkpoint" / "state.json").read_text())["step"]
    record("CLI", "train, --resume after that Ctrl-C", cli_case(
        ["train", "--concept", "circle", "--model", base, "--steps", str(stopped_at + 1), "--resume", "--no-grid",
         "--out", str(root / "cc2")]))
    for label, call in python_cases(root, files):
        where = "demo" if label.startswith("demo") else "Python"
        record(where, label, python_case(call))
    pwned = (root / "pwned").exists()
    ok = sum(r[4] for r in rows)
    summary = f"{len(rows)} cases; {ok} answered as they should; YAML tag ran code: {pwned}"
    print(summary)
    if args.out:
        from erasure.files import atomic_path
        head = [f"# Bad inputs tried ({time.strftime('%Y-%m-%d')})", "",
                f"`python benchmarks/bad_inputs.py --out {args.out}` (tiny random-weight Stable Diffusion). Paths are "
                "shortened to `…`; the first line is cut at 170 characters.", ""]
        table = head + ["| where | case | ended | first line | |", "|---|---|---|---|---|"]
        table += [f"| {w} | {label} | {c} | {line} | {'ok' if o else 'FAIL'} |" for w, label, c, line, o in rows]
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text("\n".join(table + ["", summary, ""]))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
