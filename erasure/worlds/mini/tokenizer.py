"""Build the real CLIP BPE tokenizer offline from the merges file that open_clip ships.

CLIP's vocabulary is derived, not stored: 256 byte symbols, the same with the end-of-word
marker, then one entry per merge (the first 48,894 merge lines after the header), then the two
special tokens: 49,408 entries. We write it as a transformers `CLIPTokenizer` folder
(vocab.json + merges.txt), which is what a Stable Diffusion folder carries.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # 48,894
MODEL_MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def find_open_clip_bpe() -> Path:
    try:
        import open_clip  # noqa: F401  (only its data file is used)
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise RuntimeError("building the tokenizer needs open_clip's BPE file: pip install 'erasure[clip]'") from e
    path = Path(os.path.dirname(open_clip.__file__)) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise RuntimeError(f"open_clip is installed but {path} is missing; reinstall open_clip_torch")
    return path


def build_clip_tokenizer_files(out_dir: str | Path, bpe_path: str | Path | None = None) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs of CLIP into `out_dir`."""
    bpe_path = Path(bpe_path) if bpe_path else find_open_clip_bpe()
    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : N_MERGES + 1]
    byte_symbols = list(_bytes_to_unicode().values())
    vocab_list = byte_symbols + [s + "</w>" for s in byte_symbols]
    vocab_list += ["".join(m.split()) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    assert len(vocab) == 49408, len(vocab)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "errors": "replace",
        "clean_up_tokenization_spaces": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return out
