"""Config and manifest checks (errors name the field / line), the loader's resumable order, and
the SFT trajectory rule."""
import json
from pathlib import Path

import numpy as np
import pytest

from hpo_engine.train.config import ConfigError, from_dict, load_config
from hpo_engine.train.data import ManifestError, WindowLoader, load_window, read_manifest
from hpo_engine.train.sft import monotonic_schedule

REPO = Path(__file__).resolve().parents[1]
GOOD = {"model": {"path": "m"}, "data": {"train": "t.jsonl"}}


def test_shipped_configs_load():
    tiny = load_config(REPO / "configs" / "tiny_cpu.yaml")
    assert tiny.mode == "hpo" and tiny.rollout.group_size == 8
    assert Path(tiny.model.path).is_absolute()        # relative paths are taken from the YAML's folder
    paper = load_config(REPO / "configs" / "hpo_paper.yaml")
    assert (paper.rollout.windows_per_step, paper.rollout.group_size, paper.optim.global_batch) == (32, 16, 128)
    assert paper.optim.lr == 1e-6 and paper.dialogue.chunks_per_window == 60


@pytest.mark.parametrize("patch, field", [
    ({"rollout": {"group_size": "many"}}, "rollout.group_size"),
    ({"rollout": {"group_size": 0}}, "rollout.group_size"),
    ({"rollout": {"grup_size": 4}}, "rollout.grup_size"),
    ({"optim": {"lr": -1.0}}, "optim.lr"),
    ({"optim": {"global_batch": 7}}, "optim.global_batch"),
    ({"optim": {"betas": [0.9]}}, "optim.betas"),
    ({"mode": "dpo"}, "mode"),
    ({"reward": {"granularity": "word"}}, "reward.granularity"),
    ({"train": {"progress_bar": "yes"}}, "train.progress_bar"),
    ({"dialogue": {"first_prefix_ids": [1, "a"]}}, "dialogue.first_prefix_ids[1]"),
    ({"model": {"path": ""}}, "model.path"),
    ({"reward": {"quality": "metricx"}}, "reward.quality_model_path"),
    ({"reward": {"quality": "bertscore"}}, "reward.quality"),
    ({"rollout": {"windows_together": 0}}, "rollout.windows_together"),
])
def test_bad_config_names_the_field(patch, field):
    data = json.loads(json.dumps(GOOD))
    for k, v in patch.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    with pytest.raises(ConfigError) as exc:
        from_dict(data)
    assert str(exc.value).startswith(field + ":"), str(exc.value)


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {path: m}\ndata: {train: t.jsonl}\nsft: {lag_chunks: -1}\n")
    with pytest.raises(ConfigError, match=r"^sft\.lag_chunks:"):
        load_config(bad)


def _line(**over):
    rec = {"id": "w", "features": "f.npy", "frame_start": 0, "frame_end": 10, "window_start": 0.0,
           "window_end": 5.0, "segments": [{"start": 0.0, "end": 2.0}, {"start": 2.0, "end": 4.5}],
           "src_segments": ["a b", "c d"], "tgt_segments": ["x y", "z"]}
    rec.update(over)
    return {k: v for k, v in rec.items() if v is not None}


def _manifest(tmp_path, lines):
    np.save(tmp_path / "f.npy", np.arange(30 * 4, dtype=np.float32).reshape(30, 4))
    path = tmp_path / "m.jsonl"
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return path


@pytest.mark.parametrize("bad, field", [
    (_line(tgt_segments=None), "tgt_segments"),
    (_line(src_segments=["only one"]), "src_segments"),
    (_line(segments=[{"start": 0.0}, {"start": 1.0, "end": 2.0}]), "segments[0]"),
    (_line(segments=[{"start": 3.0, "end": 2.0}, {"start": 1.0, "end": 2.0}]), "segments[0]"),
    (_line(window_end=-1.0), "window_end"),
    (_line(frame_end="ten"), "frame_end"),
    (_line(features="missing.npy"), "features"),
    (_line(tgt_segments=["x", ""]), "tgt_segments[1]"),
    (_line(colour="red"), "colour"),
    ("{not json", "not valid JSON"),
])
def test_bad_manifest_names_line_and_field(tmp_path, bad, field):
    path = _manifest(tmp_path, [_line(), bad])
    with pytest.raises(ManifestError) as exc:
        read_manifest(path)
    msg = str(exc.value)
    assert f"{path}:2:" in msg and field in msg, msg


def test_paper_column_names_and_chunking(tmp_path):
    np.save(tmp_path / "rows.npy", np.ones((3, 7, 4), dtype=np.float32))
    rec = {"audio_npy_path": "rows.npy", "audio_npy_row": 2, "audio_duration": 0.56,
           "segment_info": [{"start": 0.0, "end": 0.5}], "src_segments": ["a"], "tgt_segments": ["b"]}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    [r] = read_manifest(path)
    w = load_window(r, frames_per_chunk=3, max_chunks=60)
    assert w.num_chunks == 3 and w.embeds.shape == (9, 4)        # 7 frames -> 3 chunks of 3, zero-padded
    assert w.embeds[:7].sum() == 28 and w.embeds[7:].sum() == 0
    assert load_window(r, 3, 2).embeds.shape == (6, 4)            # at most N chunks


def test_loader_resumes_at_its_position(tmp_path):
    path = _manifest(tmp_path, [_line(id=f"w{i}") for i in range(5)])
    records = read_manifest(path)
    a = WindowLoader(records, 2, 4, seed=3)
    first = [w.id for w in a.next_batch(7)]       # crosses an epoch boundary
    state = a.state()
    rest = [w.id for w in a.next_batch(6)]
    b = WindowLoader(records, 2, 4, seed=3)
    b.load_state(state)
    assert [w.id for w in b.next_batch(6)] == rest
    assert sorted(first[:5]) == [f"w{i}" for i in range(5)]       # an epoch is a permutation


def test_monotonic_schedule_by_hand():
    # chunk 1 s, lag 1: sentence 0 [0.2, 1.5] -> chunks 1..2 (floor 0.2 + 1, ceil 1.5 - 1 + 1);
    # its 4 words: j * 2 // 4 -> 1, 1, 2, 2. Sentence 1 [1.0, 1.2]: start chunk 2 (>= last used 2),
    # end max(2, ceil(1.2) - 1 + 1) = 2 -> both words in chunk 2. Sentence 2 [3.5, 9] clipped to chunk 4.
    plan = monotonic_schedule([(0.2, 1.5), (1.0, 1.2), (3.5, 9.0)], ["a b c d", "e f", "g h i"],
                              num_chunks=5, chunk_seconds=1.0, lag_chunks=1, lang="de")
    assert plan == [[], ["a", "b"], ["c", "d", "e", "f"], [], ["g", "h", "i"]]
    zh = monotonic_schedule([(0.0, 2.0)], ["你好吗"], num_chunks=3, chunk_seconds=1.0, lag_chunks=0, lang="zh")
    assert zh == [["你", "好"], ["吗"], []]


def test_segment_scores_and_stream_laal_by_hand():
    from hpo_engine.train.reward import aligned_groups, segment_scores, sentence_instances, window_stream_laal
    # answers after chunks 1, 2, 3 (1 s chunks): delays 1, 3, 3 s; one sentence [0, 3] of 3 words:
    # step = 3 / max(3, 3) = 1; L = ((1 - 1) + (3 - 2) + (3 - 3)) / 3 = 1/3
    q, lat = segment_scores(["t7", "", "t7 t7"], ["t7 t7 t7"], [(0.0, 3.0)], "de", 1.0, "chrf")
    assert q == [100.0] and lat == [pytest.approx(1 / 3)]
    q, lat = segment_scores(["", ""], ["a b", "c"], [(0.0, 1.0), (1.0, 2.0)], "de", 1.0, "chrf", max_latency=10.0)
    assert q == [0.0, 0.0] and lat == [10.0, 10.0]          # nothing written: worst quality, max latency
    # StreamLAAL: sentence [1, 3] s, words at 2 s and 3 s -> delays 1000, 2000 ms from its start,
    # source 2000 ms, gamma = 2 / 2000, tau = 2: ((1000 - 0) + (2000 - 1000)) / 2 = 1000 ms
    groups = aligned_groups(["", "a", "b"], ["a b"], [(1.0, 3.0)], "de", 1.0)
    assert window_stream_laal(sentence_instances(groups, [(1.0, 3.0)]), "de") == pytest.approx(1000.0)
    assert window_stream_laal(sentence_instances(aligned_groups(["", ""], ["a"], [(0.0, 1.0)], "de", 1.0),
                                                 [(0.0, 1.0)]), "de") is None


def test_quality_scorer_batches_and_negates_metricx():
    from hpo_engine.metrics.segment_latency import AlignedGroup
    from hpo_engine.train.reward import QualityScorer, batch_scores

    class FakeMetricX:          # records its calls; error = number of words
        calls = []

        def score(self, hyp, ref, src):
            self.calls.append(list(hyp))
            return [float(len(h.split())) for h in hyp]

    scorer = QualityScorer("chrf")
    scorer.kind, scorer.model = "metricx", FakeMetricX()
    groups = [[AlignedGroup("r1", "a b", [1.0, 1.0], 0.5), AlignedGroup("r2", "", [], 10.0)],
              [AlignedGroup("r1", "c", [2.0], 1.0), AlignedGroup("r2", "d e f", [2.0] * 3, 1.0)]]
    q = batch_scores(scorer, groups, [["s1", "s2"], ["s1", "s2"]])
    assert q == [[-2.0, -25.0], [-1.0, -3.0]]            # negated; the empty piece gets MetricX's worst
    assert FakeMetricX.calls == [["a b", "c", "d e f"]]  # one batched call, empty pieces not scored
    with pytest.raises(FileNotFoundError):
        QualityScorer("metricx", model_path="/nonexistent/metricx")
