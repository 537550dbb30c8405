"""One-row products split over cores: same numbers as F.linear, used only where they apply."""

from contextlib import nullcontext
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from scratchllm.model import cpu_matvec, generate
from scratchllm.model.gpt import GPT, GPTConfig


@pytest.mark.parametrize("parts", [2, 3, 4, 7])
@pytest.mark.parametrize("rows", [64, 97])  # 97: rows left over for every parts above
@pytest.mark.parametrize("x_shape", [(32,), (1, 32), (1, 1, 32)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_split_linear_equals_linear(parts, rows, x_shape, with_bias):
    g = torch.Generator().manual_seed(rows * parts)
    weight = torch.randn(rows, 32, generator=g)
    bias = torch.randn(rows, generator=g) if with_bias else None
    x = torch.randn(x_shape, generator=g)
    expected = F.linear(x, weight, bias)
    got = cpu_matvec.split_linear(x, weight, bias, parts)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-6)


@pytest.fixture(autouse=True)
def split_small_matrices_too(monkeypatch):
    """The test models are small; let their products be split like a real model's."""
    monkeypatch.setattr(cpu_matvec, "MIN_SPLIT_WEIGHTS", 0)


@pytest.fixture
def routed(monkeypatch):
    """Counts the calls that SplitRowProducts sends to split_linear."""
    calls = []

    def counting(*args):
        calls.append(args[0].shape)
        return F.linear(*args[:3])

    monkeypatch.setattr(cpu_matvec, "split_linear", counting)
    return calls


def test_mode_routes_only_one_row_products_without_grad(routed):
    layer = torch.nn.Linear(16, 64)
    with cpu_matvec.SplitRowProducts(parts=2):
        with torch.no_grad():
            layer(torch.randn(1, 1, 16))  # one row: routed
            layer(torch.randn(2, 16))  # two rows: a matrix product, left to F.linear
            torch.nn.Linear(16, 4)(torch.randn(16))  # too few rows to be worth splitting
        layer(torch.randn(1, 16))  # autograd on: left alone
    with cpu_matvec.SplitRowProducts(parts=1), torch.no_grad():
        layer(torch.randn(1, 16))  # one thread: nothing to spread
    with torch.no_grad():
        layer(torch.randn(1, 16))  # outside the mode
    assert routed == [(1, 1, 16)]


def test_small_matrices_are_not_split(routed, monkeypatch):
    monkeypatch.setattr(cpu_matvec, "MIN_SPLIT_WEIGHTS", 1 << 17)
    with cpu_matvec.SplitRowProducts(parts=2), torch.no_grad():
        torch.nn.Linear(256, 256)(torch.randn(1, 256))  # 65,536 weights: cached, left whole
        torch.nn.Linear(256, 1024)(torch.randn(1, 256))  # 262,144 weights: split
    assert routed == [(1, 256)]


def test_one_thread_generates_without_the_mode(monkeypatch):
    entered = []
    monkeypatch.setattr(generate, "SplitRowProducts", lambda: entered.append(1) or nullcontext())
    model = GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    model.generate(torch.zeros(1, 1, dtype=torch.long), 3, temperature=0)
    assert entered == []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    model.generate(torch.zeros(1, 1, dtype=torch.long), 3, temperature=0)
    assert entered == [1]


def test_keyword_calls_pass_through(routed):
    layer = torch.nn.Linear(16, 64)
    x = torch.randn(1, 16)
    with cpu_matvec.SplitRowProducts(parts=2), torch.no_grad():
        y = F.linear(input=x, weight=layer.weight, bias=layer.bias)  # not routed, but must work
    torch.testing.assert_close(y, layer(x))
    assert routed == []


def test_generate_uses_split_products_and_keeps_the_tokens(monkeypatch):
    config = GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(3)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5)
    prompt = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(0))
    real_split, calls = cpu_matvec.split_linear, []
    monkeypatch.setattr(cpu_matvec, "split_linear", lambda *args: (calls.append(1), real_split(*args))[1])
    monkeypatch.setattr(generate, "SplitRowProducts", partial(cpu_matvec.SplitRowProducts, parts=3))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    split = model.generate(prompt, 30, temperature=0)  # runs past the 16-token context
    monkeypatch.setattr(generate, "SplitRowProducts", nullcontext)
    plain = model.generate(prompt, 30, temperature=0)
    uncached = model.generate(prompt, 30, temperature=0, use_cache=False)
    # Every step's head is one row. The cache holds 5 prompt positions, then takes 11 one-token
    # steps (4 products per layer each) until it is full; past that each step rebuilds the window.
    assert len(calls) == 30 + 11 * 4 * config.n_layer
    assert torch.equal(split, plain) and torch.equal(split, uncached)
    assert len(set(split[0, 5:].tolist())) > 5
