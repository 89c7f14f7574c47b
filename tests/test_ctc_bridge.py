"""The CTC bridge: collapse across chunks, rows as mixes of the LLM's embedding rows, a loss that trains."""
import pytest
import torch

from hpo_engine.speech.ctc_bridge import BLANK, CTCBridge, CTCBridgeConfig, ctc_loss


def make_bridge(seed=0, vocab=(5, 9, 17, 30), top_k=2):
    torch.manual_seed(seed)
    cfg = CTCBridgeConfig(d_encoder=12, d_llm=8, stack=2, d_hidden=16, num_layers=1, top_k=top_k, vocab_ids=vocab)
    return CTCBridge(cfg).attach_embeddings(torch.randn(40, 8)), cfg


def reference_rows(bridge, frames):
    """Rows of the whole input, computed frame by frame from the logits (no chunking)."""
    logits = bridge(frames)
    rows, last = [], BLANK
    for t in range(len(logits)):
        c = int(logits[t].argmax())
        if c != BLANK and c != last:
            s, j = logits[t, 1:].topk(bridge.cfg.top_k)
            rows.append((s.softmax(-1)[:, None] * bridge.embeddings[j]).sum(0))
        last = c
    return torch.stack(rows) if rows else torch.zeros(0, 8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_rows_equal_whole_input(seed):
    bridge, _ = make_bridge(seed)
    with torch.no_grad():
        for p in bridge.head.parameters():     # make blank and repeats common, as in a trained head
            p.mul_(6)
        frames = torch.randn(37, 12)
        state = bridge.new_state()
        chunked = torch.cat([bridge.chunk_rows(frames[a:b], state) for a, b in ((0, 10), (10, 24), (24, 37))])
        whole = reference_rows(bridge, frames)
        assert chunked.shape == whole.shape and len(whole) > 0
        torch.testing.assert_close(chunked, whole)
        assert len(bridge.greedy_ids(frames)) == len(whole)


def test_rows_are_convex_mixes_of_embedding_rows():
    bridge, cfg = make_bridge(top_k=1)
    with torch.no_grad():
        rows = bridge.chunk_rows(torch.randn(50, 12) * 3, bridge.new_state())
    table = bridge.embeddings
    for row in rows:     # top_k 1: every row is exactly one of the predicted tokens' embeddings
        assert torch.isclose(table, row).all(-1).any()


def test_ctc_loss_learns_a_fixed_transcript():
    bridge, _ = make_bridge()
    class_of = {t: j + 1 for j, t in enumerate(bridge.cfg.vocab_ids)}
    frames = torch.randn(2, 30, 12)
    targets = [[5, 9, 9, 30], [17, 5]]
    opt = torch.optim.Adam(bridge.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss = ctc_loss(bridge, frames, torch.tensor([30, 21]), targets, class_of)
        first = first if first is not None else loss.item()
        opt.zero_grad(); loss.backward(); opt.step()
    assert loss.item() < 0.1 * first
    assert bridge.greedy_ids(frames[0]) == [5, 9, 9, 30]
    assert bridge.greedy_ids(frames[1, :21]) == [17, 5]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="vocab_ids is empty"):
        CTCBridge(CTCBridgeConfig())
    bridge = CTCBridge(CTCBridgeConfig(d_encoder=4, d_llm=8, vocab_ids=(3, 99)))
    with pytest.raises(RuntimeError, match="attach_embeddings"):
        bridge.chunk_rows(torch.randn(4, 4), bridge.new_state())
    with pytest.raises(ValueError, match="outside the LLM"):
        bridge.attach_embeddings(torch.randn(50, 8))
    with pytest.raises(ValueError, match="width"):
        bridge.attach_embeddings(torch.randn(120, 6))
