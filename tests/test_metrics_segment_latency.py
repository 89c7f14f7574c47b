"""HPO reward pieces: clause split, units with delays, per-segment latency (hand-computed)."""
import pytest

from hpo_engine.metrics.segment_latency import (DEFAULT_MAX_LATENCY, TimedUnits, clause_pieces_with_delays,
                                               join_turns, latency_units, segment_latency, segment_quality,
                                               split_clauses, units_with_delays)


def test_split_clauses_word_language():
    text = "Hello, world. This is 3.5 km! Really? yes,no end."
    assert split_clauses(text, "de") == ["Hello,", "world.", "This is 3.5 km!", "Really?", "yes,no end."]
    assert split_clauses("", "en") == []


def test_split_clauses_zh_ja():
    assert split_clauses("你好，世界。。我们走吧！好", "zh") == ["你好，", "世界。。", "我们走吧！", "好"]
    assert split_clauses("こんにちは。元気？", "ja") == ["こんにちは。", "元気？"]


def test_units_and_delays():
    assert latency_units("a  b c", "de") == ["a", "b", "c"]
    assert latency_units("你 好。", "zh") == ["你", "好", "。"]
    timed = units_with_delays(["Hello world,", "", "how are", "you?"], "en", 1.12)
    assert timed.units == ["Hello", "world,", "how", "are", "you?"]
    assert timed.delays == pytest.approx([1.12, 1.12, 3.36, 3.36, 4.48])
    assert join_turns(["你好", "", "世界"], "zh") == "你好世界"
    assert join_turns(["Hello", "", "world"], "de") == "Hello world"
    zh = units_with_delays(["你好，", "世界"], "zh", 2.0)
    assert zh.delays == [2.0, 2.0, 2.0, 4.0, 4.0]


def test_clause_pieces_with_delays():
    timed = TimedUnits(["Hello,", "world.", "Bye"], [1.0, 2.0, 3.0])
    assert clause_pieces_with_delays(timed, "en") == [("Hello,", [1.0]), ("world.", [2.0]), ("Bye", [3.0])]
    zh = TimedUnits(list("你好，，世界"), [1, 1, 1, 2, 2, 3])
    assert clause_pieces_with_delays(zh, "zh") == [("你好，，", [1, 1, 1, 2]), ("世界", [2, 3])]
    assert clause_pieces_with_delays(TimedUnits([], []), "en") == []


def test_segment_latency_by_hand():
    # span [10, 14] s, reference 4 units, 2 units at 12 and 13 s: step = 4 / max(4, 2) = 1
    # L = ((12 - 1 - 10) + (13 - 2 - 10)) / 2 = 1
    assert segment_latency(10.0, 14.0, 4, [12.0, 13.0]) == pytest.approx(1.0)
    # more units than the reference: step = 4 / 8 = 0.5
    delays = [11.0] * 8
    expected = sum(11.0 - 0.5 * j - 10.0 for j in range(1, 9)) / 8
    assert segment_latency(10.0, 14.0, 4, delays) == pytest.approx(expected)
    assert segment_latency(0.0, 3.0, 5, []) == DEFAULT_MAX_LATENCY
    assert segment_latency(0.0, 3.0, 5, [], max_latency=7.0) == 7.0
    with pytest.raises(ValueError, match="before it starts"):
        segment_latency(5.0, 3.0, 1, [6.0])


def test_unaligned_segment_gets_worst_quality():
    assert segment_quality(None, "metricx") == -25.0
    assert segment_quality(None, "COMET") == 0.0
    assert segment_quality(-3.5, "metricx") == -3.5
    with pytest.raises(ValueError, match="no worst value"):
        segment_quality(None, "mystery")


def test_mwer_aligned_groups_by_hand():
    from hpo_engine.metrics.segment_latency import mwer_aligned_groups

    timed = units_with_delays(["the cat", "sat on", "the mat ."], "en", 1.0)
    refs = ["The cat sat", "on the mat .", "Nothing here"]
    groups = mwer_aligned_groups(timed, refs, [(0.0, 3.0), (3.0, 6.0), (6.0, 8.0)], "en")
    assert [g.piece for g in groups] == ["the cat sat", "on the mat .", ""]
    # group 1: span [0, 3], R = 3, delays 1, 1, 2: step 1 -> ((1-1) + (1-2) + (2-3)) / 3
    assert groups[0].latency == pytest.approx(-2 / 3)
    # group 2: span [3, 6], R = 4, delays 2, 3, 3, 3: step 0.75
    assert groups[1].latency == pytest.approx(sum(d - 0.75 * j - 3 for j, d in enumerate([2, 3, 3, 3], 1)) / 4)
    assert groups[2].latency == DEFAULT_MAX_LATENCY and groups[2].delays == []


def test_mwer_aligned_groups_characters():
    from hpo_engine.metrics.segment_latency import mwer_aligned_groups

    timed = units_with_delays(["你好，", "世界。再见"], "zh", 1.12)
    groups = mwer_aligned_groups(timed, ["你好，世界。", "再见。"], [(0.0, 2.0), (2.0, 3.0)], "zh")
    assert [g.piece for g in groups] == ["你好，世界。", "再见"]
    assert [len(g.delays) for g in groups] == [6, 2]
    assert groups[1].delays == pytest.approx([2.24, 2.24])
