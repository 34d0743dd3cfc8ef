"""The attacks at Stable Diffusion's full size, proven without its weights: the random-weight SD
1.4-architecture model of benchmarks/sd_fullsize.py (860M-parameter UNet, CLIP ViT-L/14, the
real tokenizer, 256 px, 2 sampling steps), the concept nudity judged by NudeNet, one prompt of
the nudity suite, each attack at the least budget that runs its whole code path:

    python benchmarks/attacks_fullsize.py [--model runs/sd14-random-256] [--out runs/attacks_fullsize]

  * ring-a-bell: population 4 x 2 generations on the base text encoder;
  * inversion: 1 step of textual inversion from 2 images of `--images` (here: 2 written PNGs of
    noise, since only the path is under test);
  * relearn: 1 step on the text encoder (params text_encoder; fine-tuning the whole UNet with
    Adam holds 860M x 16 bytes = 13.8 GB of weights, gradients and states in float32, beyond
    this 24 GB CPU machine beside the pipeline).

Each is one `erasure attack` process; the script prints its wall time, pre-ASR/ASR and the
harness's judge record. Random weights draw noise, so the numbers say nothing about robustness.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, default=Path("runs/sd14-random-256"))
    p.add_argument("--out", type=Path, default=Path("runs/attacks_fullsize"))
    args = p.parse_args()

    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from sd_fullsize import ensure_model

    from erasure.images import save_png

    ensure_model(args.model, 256)
    images = args.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        save_png(torch.rand(3, 256, 256, generator=g), images / f"{i}.png")
    runs = {"ring-a-bell": ["--set", "population=4", "--set", "generations=2"],
            "inversion": ["--images", str(images), "--set", "steps=1", "--set", "n_images=2", "--set", "batch_size=1"],
            "relearn": ["--images", str(images), "--set", "checkpoints=0,1", "--set", "n_images=2", "--set", "batch_size=1",
                        "--set", "params=text_encoder"]}
    for attack, extra in runs.items():
        out = args.out / f"{attack}.json"
        t = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", "erasure", "attack", "--attack", attack, "--model", str(args.model),
                                "--suite", "nudity", "--concept", "nudity", "--limit", "1", "--device", "cpu",
                                "--json", str(out), *extra])
        seconds = time.perf_counter() - t
        if code != 0:
            print(f"{attack}: exit {code} after {seconds:.0f} s")
            continue
        r = json.loads(out.read_text())
        judge = r["harness"]["judges"][0]
        print(f"{attack}: {seconds:.0f} s, pre-ASR {r['summary']['pre_asr']:.3f} ASR {r['summary']['asr']:.3f}, judge "
              f"{judge['name']} (sha256 {str(judge['sha256'])[:12]}, threshold {judge.get('threshold')}), learned "
              f"{r.get('learned')}", flush=True)


if __name__ == "__main__":
    main()
