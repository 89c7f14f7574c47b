"""How many aten calls one decode step of hpo-engine issues (torch.profiler): the dispatch overhead that
bench/peers.py's decode figures are made of at small models.

    .venv/bin/python bench/decode_ops.py [--model smollm2|qwen25]
"""
import argparse
import random

from torch.profiler import ProfilerActivity, profile

import peers

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--model", choices=peers.MODELS, default="smollm2")
args = ap.parse_args()
backend = peers.HpoBackend(peers.model_path(args.model), "float32")
rng = random.Random(0)
backend.turn("d", peers.random_ids(rng, peers.DECODE_CTX), 8)      # prefill and warm-up out of the count
with profile(activities=[ProfilerActivity.CPU]) as prof:
    backend.turn("d", [], 16)
calls = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
print(f"{args.model}: {calls / 16:.0f} aten calls per decoded token (nested calls included)")
