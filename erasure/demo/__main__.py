"""python -m erasure.demo [--model minisd|PATH] [--erasures DIR] [--port P] [--host H]"""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from . import add_arguments, main


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m erasure.demo", description="erase a concept, then see it gone, side by side")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return main(args)
    except UserError as e:
        print(f"erasure demo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
