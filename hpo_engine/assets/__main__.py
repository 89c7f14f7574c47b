"""`python -m hpo_engine.assets [smollm2] [qwen25]`: build (or find) the offline model folders."""
import sys

from .qwen25 import qwen25_path
from .smollm2 import smollm2_path

BUILDERS = {"smollm2": smollm2_path, "qwen25": qwen25_path}

if __name__ == "__main__":
    names = sys.argv[1:] or list(BUILDERS)
    for name in names:
        if name not in BUILDERS:
            sys.exit(f"unknown asset {name!r}; known: {', '.join(BUILDERS)}")
        print(BUILDERS[name]())
