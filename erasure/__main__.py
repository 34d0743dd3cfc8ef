"""`python -m erasure ...`: the CLI, as launchers run it (`accelerate launch -m erasure eval ...`)."""
from .cli import main

main()
