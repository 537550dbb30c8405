"""Packed conversation batches: whole conversations, the loss on the assistant's tokens only, an exact
resume from two integers, ranks that split the global batches, and no NaN from padding."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scratchllm.chat.loader import IGNORE, ConversationLoader, assistant_loss, best_fit
from scratchllm.runtime.distributed import Dist

T = 32


def conversations(n=60, seed=0):
    """Made-up rendered conversations: ids 1.. with a mask of 1 on a random suffix of turns."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(n):
        length = int(rng.integers(4, T + 2))
        ids = [1000 + c] + [int(i) for i in rng.integers(1, 500, length - 1)]
        mask = [0] + [int(m) for m in rng.integers(0, 2, length - 1)]
        mask[-1] = 1
        out.append((ids, mask))
    return out


def split_row(x, y, convs):
    """The conversations a row holds (by their first id, 1000 + index), checked to lie whole in it."""
    row = x.tolist()
    found, at = [], 0
    while at < len(row) and row[at] >= 1000:
        ids, mask = convs[row[at] - 1000]
        assert row[at : at + len(ids) - 1] == ids[:-1]  # its last id may be the row's last target only
        # targets: the next id where the mask marks it, else ignored
        for t in range(len(ids) - 1):
            want = ids[t + 1] if mask[t + 1] else IGNORE
            assert y[at + t].item() == want
        found.append(row[at] - 1000)
        at += len(ids)
    assert (y[at:] == IGNORE).all()  # padding is never a target
    return found


def test_an_epoch_holds_every_conversation_once_whole_with_targets_on_the_mask():
    convs = conversations()
    loader = ConversationLoader(convs, batch_size=4, block_size=T, seed=0)
    rows = loader.plan(0)
    assert sorted(c for r in rows for c in r) == list(range(len(convs)))
    assert all(sum(len(convs[c][0]) for c in r) <= T + 1 for r in rows)
    seen = []
    for _ in range(loader.batches_in(0)):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (4, T)
        for b in range(4):
            seen += split_row(x[b], y[b], convs)
    used = loader.batches_in(0) * 4
    assert sorted(seen) == sorted(c for r in rows[:used] for c in r)
    assert loader.state_dict()["epoch"] == 1 and loader.plan(1) != rows  # a new order each epoch


def test_best_fit_fills_rows_as_tightly_as_a_search_would():
    lengths = [30, 20, 13, 12, 10, 3]
    rows = best_fit(lengths, range(6), 33)
    # 30 alone leaves 3; 20 opens a row (13 left); 13 fills it; 12 opens a third (21 left), 10 joins it,
    # and 3 goes where it fits best: the first row, with exactly 3 left.
    assert rows == [[0, 5], [1, 2], [3, 4]]
    assert sum(lengths) / (len(rows) * 33) > 0.88


def test_resume_from_the_state_dict_repeats_the_batches_exactly():
    convs = conversations(80)
    a = ConversationLoader(convs, 4, T, seed=5)
    for _ in range(7):
        a.next_batch()
    state = a.state_dict()
    assert set(state) >= {"epoch", "position"} and all(isinstance(v, int) for v in state.values())
    b = ConversationLoader(convs, 4, T, seed=5)
    b.load_state_dict(state)
    for _ in range(20):  # across an epoch boundary
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(Exception, match="batch_size was 4, now 2"):
        ConversationLoader(convs, 2, T, seed=5).load_state_dict(state)


def test_two_ranks_take_the_batches_one_process_takes_in_turn():
    convs = conversations(80)
    one = ConversationLoader(convs, 2, T, seed=1)
    ranks = [ConversationLoader(convs, 2, T, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(15):  # over epoch ends: both see the same global sequence
        for r in ranks:
            x, y = r.next_batch()
            x1, y1 = one.next_batch()
            assert torch.equal(x, x1) and torch.equal(y, y1)
    assert ranks[0].state_dict() == ranks[1].state_dict() == one.state_dict()


def test_a_batch_of_padding_gives_a_zero_loss_and_a_mixed_one_the_mean_over_kept_targets():
    from scratchllm.config import GPTConfig
    from scratchllm.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=600, block_size=T, n_layer=1, n_head=2, n_embd=32))
    x = torch.randint(0, 600, (2, T))
    y = torch.full((2, T), IGNORE)
    logits, loss = model(x, y)
    loss.backward()
    assert loss.item() == 0.0 and all(torch.isfinite(p.grad).all() for p in model.parameters())
    y[0, 5:9] = x[0, 6:10]
    _, loss = model(x, y)
    assert torch.allclose(loss, F.cross_entropy(logits[0, 5:9], x[0, 6:10]), atol=1e-6)


def test_the_held_out_loss_is_the_mean_over_assistant_tokens():
    from scratchllm.config import GPTConfig
    from scratchllm.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1100, block_size=T, n_layer=1, n_head=2, n_embd=32)).eval()
    convs = conversations(9)
    got = assistant_loss(model, convs, 4, T, torch.device("cpu"), Dist())
    # Reference: each conversation alone (a row of its own), token by token where its mask is 1.
    # Packing lets a conversation attend to the ones before it in its row, so compare with rows as packed.
    rows = best_fit([len(i) for i, _ in convs], range(len(convs)), T + 1)
    total, n = 0.0, 0
    for r in rows:
        ids = [t for c in r for t in convs[c][0]]
        mask = [m for c in r for m in convs[c][1]]
        with torch.no_grad():
            logits, _ = model(torch.tensor([ids[:-1]]))
        logp = torch.log_softmax(logits[0].double(), -1)
        for t in range(len(ids) - 1):
            if mask[t + 1]:
                total -= logp[t, ids[t + 1]].item()
                n += 1
    assert got == pytest.approx(total / n, abs=1e-5)
