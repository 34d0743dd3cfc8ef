"""The MiniSD training script end to end at toy step counts: every stage, the exported folder
loads with plain diffusers, a full checkpoint resumes exactly where it stopped, and a run
without a checkpoint resumes from the exported weights. Minutes on 2 cores: marked slow."""
import json

import pytest

from erasure.worlds.mini.train import main


@pytest.mark.slow
def test_training_script_runs_every_stage_and_resumes(tmp_path):
    out, work = tmp_path / "weights", tmp_path / "run"
    common = ["--out", str(out), "--judge-steps", "4", "--vae-steps", "4", "--text-steps", "4", "--latent-pool", "256",
              "--export-minutes", "1000"]
    main(["--workdir", str(work), "--unet-steps", "3", "--checkpoint-minutes", "0", *common])
    state = json.loads((out / "minisd" / "training_state.json").read_text())
    assert state["unet_steps"] == 3 and "eval_36x2" in state
    assert (out / "judge.safetensors").exists()
    assert json.loads((out / "minisd" / "text_encoder" / "config.json").read_text())["dtype"] == "float32"
    from erasure.worlds import world_name
    from erasure.model_ref import default_sampling
    assert world_name(out / "minisd") == "mini"  # the exported folder says which world it is of ...
    assert default_sampling(out / "minisd") == {"num_inference_steps": 25, "guidance_scale": 5.0}  # ... and how it samples

    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(out / "minisd")
    assert pipe("a red circle", num_inference_steps=2, output_type="pt").images.shape == (1, 3, 64, 64)

    main(["--workdir", str(work), "--unet-steps", "5", "--stages", "unet", *common])  # full checkpoint
    ckpt = json.loads((work / "unet_checkpoint" / "state.json").read_text())
    assert ckpt["step"] == 5 and ckpt["warmup_from"] == 0

    main(["--workdir", str(tmp_path / "fresh"), "--unet-steps", "6", "--stages", "unet", *common])  # weights only
    fresh = json.loads((tmp_path / "fresh" / "unet_checkpoint" / "state.json").read_text())
    assert fresh["step"] == 6 and fresh["warmup_from"] == 5
