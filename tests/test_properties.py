"""Property-based: whatever a user puts in a YAML config, on the command line, in a CSV prompt
file or in a manifest, erasure answers with a result or a one-line UserError (exit 2 on the
CLI), never another exception, and writes nothing outside --out."""
import json
import string

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from erasure.cli import build_parser, run
from erasure.errors import UserError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=20), st.lists(st.integers(), max_size=3))
setting_names = st.sampled_from(["steps", "lr", "concept", "method", "negative_guidance", "train_method", "batch_size",
                                 "save_dtype", "seed", "checkpoint_every", "target", "bogus", "anchor_prompt", "grad_accum"])


def _one_line(text: str) -> bool:
    return len([line for line in text.strip().splitlines() if line.startswith("erasure")]) <= 1 and "Traceback" not in text


@FAST
@given(st.one_of(st.dictionaries(setting_names, scalars, max_size=6), scalars,
                 st.lists(scalars, max_size=3), st.binary(max_size=64)))
def test_any_yaml_config_is_a_config_or_a_user_error(tmp_path, content):
    from erasure.cli import _train_config
    file = tmp_path / "c.yaml"
    if isinstance(content, bytes):
        file.write_bytes(content)
    else:
        file.write_text(yaml.safe_dump(content))
    args = build_parser().parse_args(["train", "--config", str(file), "--out", str(tmp_path / "o")])
    try:
        config = _train_config(args)
    except UserError as e:
        assert "\n" not in str(e)
    else:
        assert config.method and isinstance(config.steps, int)


@FAST
@given(st.lists(st.sampled_from(["--steps", "--lr", "--guidance", "--num-images", "--seed", "--device", "--prompt",
                                 "--budget", "--limit", "--method", "--concept", "nan", "-1", "0", "inf", "1e9", "abc",
                                 "", "circle", "cpu", "tpu", "esd-x", "--set", "x=1"]), max_size=6),
       st.sampled_from(["generate", "eval", "attack", "train", "export", "import", "bench", "ls"]))
def test_any_command_line_ends_in_a_result_or_one_line(tmp_path, capsys, argv, command):
    # fails before any model work: --model points at a folder that is not a model, so only
    # argument checks run; whatever the flags, the answer is exit 0/2 and at most one error line
    before = set(tmp_path.parent.iterdir())
    try:
        code = run([command, *argv, "--model", str(tmp_path / "nomodel"), "--out", str(tmp_path / "out")])
    except SystemExit as e:  # argparse's own usage error: exit 2, one line of error
        code = e.code
    captured = capsys.readouterr()
    assert code in (0, 2), (argv, captured.err[-500:])
    assert _one_line(captured.err), captured.err[-500:]
    assert set(tmp_path.parent.iterdir()) == before  # nothing written beside tmp_path


@FAST
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200),
                 st.lists(st.lists(st.text(alphabet=string.printable, max_size=8), max_size=4), max_size=5)))
@example(content=[['"0'], ['0']])  # an open quote puts a line break into the header's only field
def test_any_csv_prompt_file_is_prompts_or_a_user_error(tmp_path, content):
    from erasure.prompt_files import read_prompts
    file = tmp_path / "p.csv"
    if isinstance(content, bytes):
        file.write_bytes(content)
    elif isinstance(content, str):
        file.write_text(content)
    else:
        file.write_text("\n".join(",".join(row) for row in content))
    try:
        prompts = read_prompts(file, "--prompts")
    except UserError as e:
        assert "\n" not in str(e)
    else:
        assert prompts and all(isinstance(p, str) and p for p in prompts)


@FAST
@given(st.one_of(st.binary(max_size=100), st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                                                  st.dictionaries(st.text(max_size=8), c, max_size=4)),
                                                        max_leaves=8),
                 st.fixed_dictionaries({"format": st.sampled_from(["erasure/1", "x"]), "method": scalars,
                                        "base_model": scalars, "changed_tensors": scalars, "config": scalars})))
def test_any_manifest_is_read_or_a_user_error(tmp_path, content):
    from erasure.erasure_files import read_manifest
    folder = tmp_path / "e"
    folder.mkdir(exist_ok=True)
    (folder / "erasure_config.json").write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    (folder / "erasure_model.safetensors").write_bytes(b"")
    try:
        manifest = read_manifest(folder)
    except UserError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(manifest, dict) and manifest["format"].startswith("erasure/")
