import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that reaches for the network fails loudly
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A tiny random-weight SD folder on disk, saved like a user's Stable Diffusion folder."""
    from tiny import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny_sd")
    build_tiny_pipeline().save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_mini_dir(tmp_path_factory) -> Path:
    """The same tiny random SD, declared a model of MiniSD's world (erasure_world.json): its
    64x64 images are read by the MiniSD judge and its concepts are MiniSD's."""
    import json

    from tiny import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny_mini")
    build_tiny_pipeline().save_pretrained(path, safe_serialization=True)
    (path / "erasure_world.json").write_text(json.dumps({"world": "mini"}))
    return path


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Image caches of `erasure eval` go to a temp folder, never the user's ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
