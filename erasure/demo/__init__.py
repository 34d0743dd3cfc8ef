"""The Gradio demo: `erasure demo` or `python -m erasure.demo` (needs: pip install 'erasure[demo]').

This module stays light (no Gradio import) so that `erasure --help` does not pay for it;
`build_app` and `launch` come from erasure/demo/app.py (the Gradio UI), `Demo` and `Limits` from
erasure/demo/logic.py (the demo without its UI; the training queue is erasure/demo/jobs.py), on
first use.
"""
from __future__ import annotations

import argparse

from ..errors import UserError

__all__ = ["build_app", "launch", "Demo", "Limits", "add_arguments", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="minisd", help="base model: 'minisd' (default) or a Stable Diffusion folder")
    p.add_argument("--erasures", default="erasures", help="folder of erasures to compare and to save new ones in "
                   "(default: ./erasures, created if missing)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860, or the next free one)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1, this machine only; "
                   "anything else is served to the network, with a warning)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, ...")


def main(args: argparse.Namespace) -> int:
    """Serve the demo until interrupted."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the demo needs Gradio: pip install 'erasure[demo]'") from None
    from .app import launch
    launch(args.model, args.erasures, host=args.host, port=args.port, device=args.device)
    return 0


def __getattr__(name: str):
    if name in ("build_app", "launch"):
        from . import app
        return getattr(app, name)
    if name in ("Demo", "Limits"):
        from . import logic
        return getattr(logic, name)
    raise AttributeError(f"module 'erasure.demo' has no attribute {name!r}")
