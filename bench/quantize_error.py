"""What int8 weights (and W8A8's int8 activations) cost in accuracy: next-token logprobs of the SST model
under each precision against float32, teacher-forced on real translation dialogues.

Run:    .venv/bin/python bench/quantize_error.py runs/de [--model SST_FOLDER] [--talks 20] [--threads 2]

Each dialogue is a test talk of a demo data folder (`python -m hpo_engine.demo data`) in the SST format:
system prompt, then per sentence a user turn holding the English words and an assistant turn holding
the reference translation. The English goes in as the LLM's own token ids, which is what the
transcriber feeds the LLM (rows of its own token embeddings), so only the speech recognition is left
out. One full-sequence forward per talk and precision; every position's next-token distribution is
compared with float32's:

- |d logprob|: |log p_q(t) - log p_fp32(t)| of the dialogue's actual next token t (mean, p99, max);
- KL(fp32 || q), mean over positions, in nats;
- top-1 agreement: the share of positions where both precisions rank the same token first;
- over the assistant positions only (what the model writes), the same |d logprob| mean.

The int8 kernels serve decode-sized batches (<= MAX_INT8_ROWS rows); a talk's forward has more rows,
so the bound is lifted here. That changes no number: each row's result depends only on that row
(the kernels are batch-invariant bit for bit, tests/test_kernels_w8a8.py and test_kernels_linear.py).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = [  # (name, dtype, quantize)
    ("float32", torch.float32, None),
    ("bfloat16", torch.bfloat16, None),
    ("int8 (fp32 activations)", torch.float32, "int8"),
    ("int8 (bf16 activations)", torch.bfloat16, "int8"),
    ("w8a8", torch.float32, "w8a8"),
]


def dialogues(data: Path, model, lang: str, talks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids [T], assistant mask [T]) of the first `talks` test talks, each in the SST dialogue format."""
    from hpo_engine.sst.dialogue import DialogueTokens
    tok = model.engine.tokenizer
    fmt = DialogueTokens.build(tok, model.config, lang)
    out = []
    for line in (data / "test.jsonl").read_text().splitlines()[:talks]:
        talk = json.loads(line)
        ids, mask = list(fmt.system), [False] * len(fmt.system)
        for k, (src, tgt) in enumerate(zip(talk["src_segments"], talk["tgt_segments"])):
            prefix = fmt.first_user_prefix if k == 0 else fmt.next_user_prefix
            user = prefix + tok.encode(" " + src, add_special_tokens=False) + fmt.user_suffix
            answer = tok.encode(tgt, add_special_tokens=False) + model.config.stop_token_ids[:1]
            ids += user + answer
            mask += [False] * len(user) + [True] * len(answer)
        out.append((torch.tensor(ids), torch.tensor(mask)))
    return out


@torch.inference_mode()
def next_token_logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    """[T - 1, V] float32 log-probabilities of positions 1..T-1 given the tokens before them."""
    llm = model.engine.model
    T = len(ids)
    hidden = llm(llm.embed(ids), torch.arange(T), cu_seqlens=torch.tensor([0, T]))
    return llm.logits(hidden[:-1]).float().log_softmax(-1)


def compare(ref: list[torch.Tensor], got: list[torch.Tensor], data) -> dict:
    d_all, d_asst, kl, agree = [], [], [], []
    for r, g, (ids, mask) in zip(ref, got, data):
        t = ids[1:]
        d = (g.gather(1, t[:, None]) - r.gather(1, t[:, None])).squeeze(1).abs()
        d_all.append(d)
        d_asst.append(d[mask[1:]])
        kl.append((r.exp() * (r - g)).sum(-1))
        agree.append((r.argmax(-1) == g.argmax(-1)).float())
    d_all, d_asst, kl, agree = (torch.cat(x).numpy() for x in (d_all, d_asst, kl, agree))
    return {"positions": int(len(d_all)), "dlogprob_mean": float(d_all.mean()),
            "dlogprob_p99": float(np.percentile(d_all, 99)), "dlogprob_max": float(d_all.max()),
            "dlogprob_mean_assistant": float(d_asst.mean()), "kl_mean": float(kl.mean()),
            "top1_agreement": float(agree.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="a demo data folder with test.jsonl (python -m hpo_engine.demo data)")
    ap.add_argument("--model", default=None, help="SST checkpoint folder (default: the embedded default)")
    ap.add_argument("--target-lang", default=None, help="default: the data folder's language (de unless named zh)")
    ap.add_argument("--talks", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from hpo_engine.kernels import cpu_linear
    from hpo_engine.sst import open_sst
    cpu_linear.MAX_INT8_ROWS = 1 << 30          # a whole talk through the decode kernels (see the docstring)
    lang = args.target_lang or ("zh" if args.data.name.startswith("zh") else "de")
    results, ref, data = {}, None, None
    for name, dtype, quantize in VARIANTS:
        t0 = time.perf_counter()
        model = open_sst(args.model, dtype=dtype, quantize=quantize)
        if data is None:
            data = dialogues(args.data, model, lang, args.talks)
        got = [next_token_logprobs(model, ids) for ids, _ in data]
        if ref is None:
            ref = got
        else:
            results[name] = compare(ref, got, data)
            print(json.dumps({name: results[name]}), f"({time.perf_counter() - t0:.0f} s)", flush=True)
        del model
    print()
    print(f"| precision | {lang} positions | mean d logprob | p99 | max | mean on the translation | KL | top-1 agreement |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['positions']} | {r['dlogprob_mean']:.4f} | {r['dlogprob_p99']:.3f} | "
              f"{r['dlogprob_max']:.2f} | {r['dlogprob_mean_assistant']:.4f} | {r['kl_mean']:.5f} | "
              f"{r['top1_agreement']:.2%} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
