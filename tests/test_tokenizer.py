from transformers import CLIPTokenizer

from erasure.model_ref import MINISD_PATH
from erasure.worlds.mini.tokenizer import build_clip_tokenizer_files

# The real CLIP tokenizer's ids for this prompt (openai/clip-vit-large-patch14).
EXPECTED = [49406, 320, 1125, 539, 320, 16630, 2533, 49407]


def test_tokenizer_built_from_open_clip_matches_clip(tmp_path):
    tok = CLIPTokenizer.from_pretrained(build_clip_tokenizer_files(tmp_path))
    assert len(tok) == 49408
    assert tok("a photo of a nude person").input_ids == EXPECTED


def test_shipped_tokenizer_is_clip_and_truncates_at_77():
    tok = CLIPTokenizer.from_pretrained(MINISD_PATH / "tokenizer")
    assert tok("a photo of a nude person").input_ids == EXPECTED
    ids = tok("circle " * 200, truncation=True, max_length=tok.model_max_length).input_ids
    assert tok.model_max_length == 77 and len(ids) == 77 and ids[-1] == 49407
