"""`hpo-engine score shortform|longform`: quality and latency of SimulEval logs."""
from __future__ import annotations

import json
import math
import sys
from typing import Dict

import click

from .instances import MetricsInputError
from .units import LATENCY_UNITS


def _emit(scores: Dict[str, float], as_json: bool) -> None:
    # JSON has no NaN or Infinity (json.dumps would write them anyway): they become null, and stderr says
    # which scores were not finite, so that a null is never mistaken for a missing metric
    undefined = [k for k, v in scores.items() if isinstance(v, float) and not math.isfinite(v)]
    if as_json:
        if undefined:
            click.echo("warning: not finite, written as null: "
                       + ", ".join(f"{k} ({scores[k]})" for k in undefined), err=True)
        click.echo(json.dumps({k: None if k in undefined else v for k, v in scores.items()}, allow_nan=False))
        return
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in scores.items()}
    width = max(len(k) for k in clean) if clean else 0
    for key, value in clean.items():
        shown = "n/a" if value is None else value if isinstance(value, str) else f"{value:.4f}"
        click.echo(f"{key:<{width}}  {shown}")


def _run(fn, **kwargs) -> Dict[str, float]:
    try:
        return fn(**kwargs)
    except (MetricsInputError, FileNotFoundError, ValueError, RuntimeError, ImportError) as err:
        raise click.ClickException(str(err)) from None


@click.group(name="score")
def score() -> None:
    """Score simultaneous translation logs (quality and latency)."""


@score.command()
@click.option("--hypothesis", required=True, type=click.Path(exists=True, dir_okay=False),
              help="SimulEval instances.log (one JSON object per sentence).")
@click.option("--references", type=click.Path(exists=True, dir_okay=False), default=None,
              help="One reference per line (default: each log line's 'reference').")
@click.option("--latency-unit", type=click.Choice(LATENCY_UNITS), default="word", show_default=True)
@click.option("--lang", default=None, help="Target language; picks the BLEU tokenizer (zh, ja-mecab, 13a).")
@click.option("--bleu-tokenizer", default=None, help="sacrebleu tokenizer (overrides --lang).")
@click.option("--no-use-ref-len", is_flag=True, help="SimulEval: use the hypothesis length, not the reference's.")
@click.option("--fix-elapsed", is_flag=True,
              help="Repair SimulEval's cumulative elapsed for YAAL_CA (OmniSTEval's long-form repair; "
                   "its shortform mode has none).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def shortform(hypothesis, references, latency_unit, lang, bleu_tokenizer, no_use_ref_len,
              fix_elapsed, as_json):
    """Sentence-level log: BLEU, chrF, TER, AL, LAAL, DAL, AP (+_CA), YAAL (+_CA)."""
    from .quality import default_bleu_tokenizer
    from .scoring import score_shortform

    scores = _run(score_shortform, hypothesis=hypothesis, references=references, unit=latency_unit,
                  bleu_tokenizer=bleu_tokenizer or default_bleu_tokenizer(lang),
                  use_ref_len=not no_use_ref_len, fix_elapsed=fix_elapsed)
    _emit(scores, as_json)


@score.command()
@click.option("--hypothesis", required=True, type=click.Path(exists=True, dir_okay=False),
              help="SimulEval instances.log (one JSON object per recording, with 'source').")
@click.option("--references", required=True, type=click.Path(exists=True, dir_okay=False),
              help="One reference sentence per line, in segmentation order.")
@click.option("--segmentation", required=True, type=click.Path(exists=True, dir_okay=False),
              help="YAML list of {wav, offset, duration} (s), one per reference sentence.")
@click.option("--lang", required=True, help="Target language (BLEU tokenizer, Moses for soft).")
@click.option("--segmenter", type=click.Choice(["mwer", "soft"]), default="mwer", show_default=True,
              help="mwer: StreamLAAL; soft: OmniSTEval's SoftSegmenter and LongYAAL.")
@click.option("--latency-unit", type=click.Choice(LATENCY_UNITS), default=None,
              help="Default: char for zh/ja, word otherwise.")
@click.option("--bleu-tokenizer", default=None, help="sacrebleu tokenizer (default from --lang).")
@click.option("--no-moses", is_flag=True, help="soft: align untokenized words (OmniSTEval without --lang).")
@click.option("--fix-elapsed", is_flag=True, help="soft: OmniSTEval's --fix_simuleval_emission_ca.")
@click.option("--iwslt2026", is_flag=True,
              help="What the IWSLT 2026 simultaneous track reports: BLEU, chrF, LongYAAL(_CA) (OmniSTEval's "
                   "SoftSegmenter), StreamLAAL(_CA) (mWER), COMET with --comet-model, and the latency regime "
                   "(0-2 s, 2-4 s). Replaces --segmenter.")
@click.option("--comet-model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="--iwslt2026: a local COMET / xCOMET-XL checkpoint (.ckpt); needs unbabel-comet.")
@click.option("--sources", type=click.Path(exists=True, dir_okay=False), default=None,
              help="--iwslt2026 with --comet-model: one source sentence per reference line.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def longform(hypothesis, references, segmentation, lang, segmenter, latency_unit, bleu_tokenizer,
             no_moses, fix_elapsed, iwslt2026, comet_model, sources, as_json):
    """Long-form log: resegment into reference sentences, then BLEU, chrF, TER and
    StreamLAAL(_CA) (mwer) or LongYAAL(_CA) (soft); or the IWSLT 2026 track's report (--iwslt2026)."""
    from .segment_latency import is_char_language
    from .scoring import score_iwslt2026, score_longform

    if (comet_model or sources) and not iwslt2026:
        raise click.UsageError("--comet-model and --sources go with --iwslt2026")
    if iwslt2026:
        scores = _run(score_iwslt2026, hypothesis=hypothesis, references=references, segmentation=segmentation,
                      lang=lang, comet_path=comet_model, sources=sources, fix_elapsed=fix_elapsed)
        if not as_json:
            click.echo(f"IWSLT 2026 simultaneous track, long-form, en-{lang} (latency in ms; "
                       "LongYAAL decides the regime)")
        _emit(scores, as_json)
        return
    unit = latency_unit or ("char" if is_char_language(lang) else "word")
    scores = _run(score_longform, hypothesis=hypothesis, references=references,
                  segmentation=segmentation, lang=lang, segmenter=segmenter, unit=unit,
                  bleu_tokenizer=bleu_tokenizer, moses=not no_moses, fix_elapsed=fix_elapsed)
    _emit(scores, as_json)


if __name__ == "__main__":  # pragma: no cover
    score(sys.argv[1:])
