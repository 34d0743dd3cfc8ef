"""The one reader of prompt files: a .txt (one prompt per line) or a .csv with a `prompt` column
(and any other columns the caller keeps). A byte-order mark is ignored; every problem is a
one-line UserError that names the flag the file came from."""
from __future__ import annotations

import csv
from pathlib import Path

from .errors import UserError

# the prompt sets the package ships (erasure/data/prompts/: the benchmark's, the methods' recipes')
SHIPPED_PROMPTS = Path(__file__).parent / "data" / "prompts"


def shipped_prompt_file(setting: str) -> str:
    """A prompt-file setting as a path: a bare file name that is no file here but one of the
    shipped prompt files (as the catalogue's recipes name them) resolves to that one; anything
    else is returned as given."""
    shipped = SHIPPED_PROMPTS / setting
    if setting and Path(setting).name == setting and not Path(setting).expanduser().exists() and shipped.is_file():
        return str(shipped)
    return setting


MAX_PROMPT_FILE_BYTES = 64 * 10**6  # COCO-30k's prompts are 3 MB; larger is a wrong file
# one prompt typed on the command line or in a config: the text encoder reads 77 tokens (a few
# hundred characters); thousands of characters are a pasted file, not a prompt
MAX_PROMPT_CHARS = 2000


def check_prompt_text(text: str, flag: str) -> str:
    """`text` stripped, or a one-line UserError when it is empty or longer than MAX_PROMPT_CHARS."""
    text = text.strip()
    if not text:
        raise UserError(f"{flag} is empty; say what to draw, e.g. {flag} 'a red circle'")
    if len(text) > MAX_PROMPT_CHARS:
        raise UserError(f"{flag} is {len(text)} characters, above the {MAX_PROMPT_CHARS} a prompt may be (the text "
                        "encoder reads its first 77 tokens); shorten it, or put many prompts in a .txt file")
    return text


def read_prompt_table(path: str | Path, flag: str, choices: str = "", csv_only: bool = False) -> list[dict[str, str]]:
    """Rows of a prompt file as {column: stripped text} ({"prompt": ...} for a .txt), in file
    order, rows with an empty prompt dropped. `choices` names what else `flag` accepts."""
    path = Path(path)
    kinds = "a CSV with a 'prompt' column" if csv_only else "a .txt (one prompt per line) or a .csv with a 'prompt' column"
    if not path.is_file():
        raise UserError(f"{flag}: no file at {path}; pass {choices + ' or ' if choices else ''}{kinds}")
    if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
        raise UserError(f"{flag}: {path} is {path.stat().st_size / 1e6:.0f} MB, above the {MAX_PROMPT_FILE_BYTES // 10**6} MB "
                        "a prompt file may be; split it, or pass --limit on a smaller file")
    try:
        if csv_only or path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                fields = [(h or "").strip() for h in (reader.fieldnames or [])]
                if "prompt" not in fields:
                    # a header field may hold a line break (an open quote): shown escaped, the error stays one line
                    found = ", ".join(h if h.isprintable() else repr(h) for h in fields) or "nothing"
                    raise UserError(f"{flag}: {path} has no 'prompt' column (found: {found}); "
                                    "the first line must be a header such as prompt,object,color,style")
                rows = [{(k or "").strip(): (v or "").strip() for k, v in raw.items() if isinstance(v, str) or v is None}
                        for raw in reader]
        else:
            rows = [{"prompt": line.strip()} for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except UnicodeDecodeError:
        raise UserError(f"{flag}: {path} is not UTF-8 text; pass {kinds}") from None
    except csv.Error as e:
        raise UserError(f"{flag}: {path} is not a readable CSV ({e}); pass {kinds}") from None
    return rows


def read_prompts(path: str | Path, flag: str, choices: str = "") -> list[str]:
    """The non-empty prompts of a prompt file; a file that holds none is an error."""
    prompts = [r["prompt"] for r in read_prompt_table(path, flag, choices) if r.get("prompt")]
    if not prompts:
        raise UserError(f"{flag}: {path} holds no prompt")
    return prompts
