"""The Stable Diffusion path at full size: a random-weight SD-1.4-architecture model built
offline from its configs (benchmarks/sd_fullsize.py), two optimizer steps of a method on the
CPU. Slow (a 4.3 GB model, minutes, ~9 GiB of memory): `pytest -m slow tests/test_fullsize.py`;
every method: `python benchmarks/sd_fullsize.py`."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "sd_fullsize.py"


@pytest.mark.slow
def test_esd_x_trains_two_steps_on_a_full_size_sd14(tmp_path):
    model, out = tmp_path / "sd14", tmp_path / "out"
    subprocess.run([sys.executable, str(SCRIPT), "--methods", "esd-x", "--model", str(model), "--out", str(out)],
                   check=True)
    unet = json.loads((model / "unet" / "config.json").read_text())
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["cross_attention_dim"] == 768
    result = json.loads((out / "esd-x.json").read_text())
    assert len(result["losses"]) == 2 and all(0 < x < float("inf") for x in result["losses"])
    assert result["trained_params_M"] > 40  # SD 1.4's cross-attention, not a tiny model's
    assert (out / "esd-x" / "erasure_model.safetensors").exists()
