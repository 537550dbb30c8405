"""The token loader: shifted targets, both orders, exact resume, disjoint ranks, bounded memory."""

import os

import numpy as np
import pytest
import torch

from scratchllm.data.loader import TokenLoader, eval_batches
from scratchllm.data.tokens import HEADER_BYTES, ShardedTokens, read_tokens, write_tokens
from scratchllm.util.errors import UserError


@pytest.fixture
def tokens(tmp_path):
    write_tokens(tmp_path / "t.bin", np.arange(1000, dtype=np.uint16))
    return read_tokens(tmp_path / "t.bin")


@pytest.mark.parametrize("order", ["random", "sequential"])
def test_targets_are_inputs_shifted_by_one(tokens, order):
    x, y = TokenLoader(tokens, 4, 16, order, seed=3).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    # tokens are 0..999, so every row must be a run of consecutive ids and y = x + 1
    assert torch.equal(y, x + 1) and torch.equal(x[:, 1:], x[:, :-1] + 1)


def test_sequential_epoch_visits_every_window_once(tokens):
    loader = TokenLoader(tokens, 4, 10, "sequential")
    n = loader.n_windows  # (1000 - 1) // 10 = 99
    starts = torch.cat([loader.next_batch()[0][:, 0] for _ in range(25)])  # 100 windows: one wraps
    assert n == 99
    assert sorted(starts[:n].tolist()) == list(range(0, 990, 10))
    assert starts[n].item() == 0 and loader.epoch() == pytest.approx(100 / 99)


def test_random_order_is_seeded(tokens):
    a = [TokenLoader(tokens, 4, 16, seed=1).next_batch()[0] for _ in range(2)]
    b = TokenLoader(tokens, 4, 16, seed=2).next_batch()[0]
    assert torch.equal(a[0], a[1]) and not torch.equal(a[0], b)


@pytest.mark.parametrize("order", ["random", "sequential"])
def test_state_dict_resumes_exactly(tokens, order):
    ref = TokenLoader(tokens, 3, 8, order, seed=5)
    expected = [ref.next_batch()[0] for _ in range(7)]
    first = TokenLoader(tokens, 3, 8, order, seed=5)
    for _ in range(4):
        first.next_batch()
    second = TokenLoader(tokens, 3, 8, order, seed=5)
    second.load_state_dict(first.state_dict())
    assert all(torch.equal(second.next_batch()[0], e) for e in expected[4:])
    with pytest.raises(UserError, match="batch_size"):
        TokenLoader(tokens, 2, 8, order, seed=5).load_state_dict(first.state_dict())


@pytest.mark.parametrize("order", ["random", "sequential"])
def test_ranks_read_different_data_and_together_equal_one_process(tokens, order):
    single = TokenLoader(tokens, 2, 8, order, seed=9)
    ranks = [TokenLoader(tokens, 2, 8, order, seed=9, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        r0, r1 = ranks[0].next_batch()[0], ranks[1].next_batch()[0]
        assert not torch.equal(r0, r1)
        assert torch.equal(r0, single.next_batch()[0]) and torch.equal(r1, single.next_batch()[0])


def test_eval_batches_are_fixed_and_shared_out(tokens):
    all_ = [x for x, _ in eval_batches(tokens, 2, 8, 5)]
    shares = [[x for x, _ in eval_batches(tokens, 2, 8, 5, rank=r, world_size=2)] for r in range(2)]
    assert [len(s) for s in shares] == [3, 2]
    assert all(torch.equal(a, b) for a, b in zip(all_, [shares[0][0], shares[1][0], shares[0][1],
                                                       shares[1][1], shares[0][2]], strict=True))


def test_too_few_tokens_is_a_user_error(tokens):
    with pytest.raises(UserError, match="too few"):
        TokenLoader(tokens[:10], 1, 16)


def _rss_kb() -> dict:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                key, value, _ = line.split()
                fields[key[:-1]] = int(value)
    return fields


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux /proc")
def test_memory_does_not_grow_with_a_4gb_file(tmp_path):
    n = 2_000_000_000  # uint16: 4 GB of tokens, a sparse file (reads as zeros, takes no disk)
    path = tmp_path / "big.bin"
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, n)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.truncate(HEADER_BYTES + 2 * n)
    big = read_tokens(path)
    loader = TokenLoader(big, 16, 1024, "random", seed=0)
    before = _rss_kb()
    for _ in range(200):
        loader.next_batch()
    after = _rss_kb()
    assert len(big) == n
    # Nothing is copied into the process (anonymous memory), and the mapped file pages stay a
    # small part of the file: the windows plus the kernel's read-around, not the 4 GB.
    assert after["RssAnon"] - before["RssAnon"] < 64 * 1024
    assert after["RssFile"] - before["RssFile"] < 1024 * 1024


def _sparse_shard(path, n):
    """A token file of n zeros that takes no disk (a sparse file)."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, n)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.truncate(HEADER_BYTES + 2 * n)
    return read_tokens(path)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux /proc")
def test_memory_does_not_grow_with_the_number_of_shards(tmp_path):
    shards = ShardedTokens([_sparse_shard(tmp_path / f"s{i}.bin", 100_000_000) for i in range(64)])  # 12.8 GB
    loader = TokenLoader(shards, 16, 1024, "random", seed=0)
    before = _rss_kb()
    for _ in range(200):
        loader.next_batch()
    after = _rss_kb()
    assert len(shards) == 6_400_000_000
    assert after["RssAnon"] - before["RssAnon"] < 64 * 1024
    assert after["RssFile"] - before["RssFile"] < 1024 * 1024


@pytest.fixture
def shard_files(tmp_path):
    """1,000 tokens 0..999 as one array, and as shards of 1, 7, 300, 2 and 690 tokens."""
    whole = np.arange(1000, dtype=np.uint16)
    parts, at = [], 0
    for i, n in enumerate((1, 7, 300, 2, 690)):
        write_tokens(tmp_path / f"p{i}.bin", whole[at : at + n])
        parts.append(read_tokens(tmp_path / f"p{i}.bin"))
        at += n
    return whole, ShardedTokens(parts)


@pytest.mark.parametrize("order", ["random", "sequential"])
def test_shards_give_the_batches_of_one_file(shard_files, order):
    whole, shards = shard_files
    one, many = TokenLoader(whole, 8, 16, order, seed=4), TokenLoader(shards, 8, 16, order, seed=4)
    for _ in range(30):  # windows cross every shard boundary somewhere in 240 windows
        a, b = one.next_batch(), many.next_batch()
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    val = [[x.tolist() for x, _ in eval_batches(t, 4, 16, 5)] for t in (whole, shards)]
    assert val[0] == val[1]


def _documents(lengths, eot):
    """Documents of ids 1.. (never eot) of the given lengths, each followed by eot."""
    out = []
    for n in lengths:
        out += [*(1 + np.arange(n) % 50), eot]
    return np.array(out, dtype=np.uint16)


def test_aligned_windows_start_at_documents_within_reach():
    T, eot = 16, 99
    tokens = _documents([5, 40, 3, 3, 200, 7, 60, 1, 1, 30], eot)
    doc_starts = sorted({0} | {int(i) + 1 for i in np.flatnonzero(tokens == eot)})

    def expected(s):  # the next document start, if it is within T - 1 tokens and leaves room for a window
        d = next(d for d in doc_starts + [len(tokens)] if d >= s)
        return d if d - s <= T - 1 and d <= len(tokens) - T - 1 else s

    plain = TokenLoader(tokens, 64, T, "random", seed=0)
    loader = TokenLoader(tokens, 64, T, "random", seed=0, align=True, eot=eot)
    got = [s for k in range(20) for s in loader.starts(k).tolist()]
    assert got == [expected(s) for k in range(20) for s in plain.starts(k).tolist()]
    assert 0.2 < np.mean([s in doc_starts for s in got]) < 1  # some aligned; inside the long ones, not
    x, y = loader.batch_at(3)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_aligned_loader_resumes_exactly_and_ranks_split_one_process():
    tokens = ShardedTokens([_documents([9, 30, 2, 17] * 20, 999)])
    make = lambda **kw: TokenLoader(tokens, 4, 16, "random", seed=5, align=True, eot=999, **kw)  # noqa: E731
    a = make()
    for _ in range(3):
        a.next_batch()
    b = make()
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.next_batch()[0], b.next_batch()[0])
    single = make()
    ranks = [make(rank=r, world_size=2) for r in range(2)]
    for _ in range(4):
        both = torch.cat([ranks[0].next_batch()[0], ranks[1].next_batch()[0]])
        assert torch.equal(both, torch.cat([single.next_batch()[0], single.next_batch()[0]]))
    with pytest.raises(UserError, match="align was True, now False"):
        TokenLoader(tokens, 4, 16, "random", seed=5).load_state_dict(a.state_dict())
    old = {k: v for k, v in TokenLoader(tokens, 4, 16, "random", seed=5).state_dict().items() if k != "align"}
    TokenLoader(tokens, 4, 16, "random", seed=5).load_state_dict(old)  # saved before the key existed: off
