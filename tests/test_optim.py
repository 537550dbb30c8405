"""Optimizers and schedules: WSD, Muon's parameter split, its float32 path against PyTorch's Muon."""

import copy
import math

import pytest
import torch

from scratchllm.config import TrainConfig
from scratchllm.model.gpt import GPT, GPTConfig
from scratchllm.train.optim import (
    Muon,
    Optimizers,
    lr_at,
    lr_factor,
    make_optimizer,
    muon_momentum,
    orthogonalize,
)

NS = (3.4445, -4.775, 2.0315)


def test_wsd_warms_up_holds_then_decays_linearly_over_the_cooldown():
    tc = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=100, schedule="wsd", cooldown_frac=0.4)
    assert lr_at(0, tc) == pytest.approx(1e-4) and lr_at(9, tc) == pytest.approx(1e-3)
    assert all(lr_at(s, tc) == pytest.approx(1e-3) for s in range(10, 61))  # stable until the last 40%
    assert lr_at(80, tc) == pytest.approx(1e-3 - 0.5 * 9e-4)  # half-way down the straight line
    assert lr_at(100, tc) == pytest.approx(1e-4) and lr_at(1000, tc) == pytest.approx(1e-4)
    values = [lr_at(s, tc) for s in range(60, 101)]
    steps = [a - b for a, b in zip(values, values[1:], strict=False)]
    assert steps == pytest.approx([9e-4 / 40] * 40)  # linear: equal steps down


def test_cosine_factor_is_a_fraction_of_each_optimizers_own_peak():
    tc = TrainConfig(lr=2e-3, min_lr=2e-4, warmup_steps=0, max_steps=10)
    assert lr_factor(0, tc) == pytest.approx(1.0) and lr_factor(10, tc) == pytest.approx(0.1)
    assert lr_factor(5, tc) == pytest.approx(0.55)


def test_muon_momentum_warms_up_from_0_85():
    tc = TrainConfig(muon_momentum=0.95, muon_momentum_warmup=300)
    assert muon_momentum(0, tc) == pytest.approx(0.85)
    assert muon_momentum(150, tc) == pytest.approx(0.90)
    assert muon_momentum(300, tc) == muon_momentum(5000, tc) == pytest.approx(0.95)
    assert muon_momentum(0, TrainConfig(muon_momentum_warmup=0)) == pytest.approx(0.95)


def _model(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, **kw))


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = _model(tie_embeddings=False)
    opts = make_optimizer(model, TrainConfig(optimizer="muon"))
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opts.optimizers["muon"].param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in opts.optimizers["adamw"].param_groups for p in g["params"]}
    assert muon == {n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.ndim == 2}
    assert {"transformer.wte.weight", "lm_head.weight", "transformer.ln_f.weight"} <= adamw
    assert not muon & adamw and muon | adamw == set(names.values())  # every parameter exactly once
    assert list(make_optimizer(model, TrainConfig()).optimizers) == ["adamw"]


def test_orthogonalize_in_float32_is_close_to_bf16_and_near_orthogonal():
    g = torch.randn(48, 128, generator=torch.Generator().manual_seed(0))
    o32 = orthogonalize(g, NS, 5, 1e-7, torch.float32)
    o16 = orthogonalize(g, NS, 5, 1e-7, torch.bfloat16).float()
    assert o32.dtype == torch.float32 and o32.shape == g.shape
    s = torch.linalg.svdvals(o32)
    assert 0.5 < s.min() and s.max() < 1.5  # Keller Jordan's quintic: singular values near 1, not exactly
    assert (o32 - o16).abs().max() < 0.03 * o32.abs().max()
    tall = orthogonalize(g.T.contiguous(), NS, 5, 1e-7, torch.float32)
    assert torch.allclose(tall, o32.T, atol=1e-6)  # a tall matrix is done on its wide transpose


def _grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


@pytest.mark.parametrize("adjust_lr_fn", [None, "match_rms_adamw"])
def test_our_update_equals_pytorchs_muon_when_the_iteration_is_bf16(adjust_lr_fn):
    params = [torch.nn.Parameter(torch.randn(24, 40)), torch.nn.Parameter(torch.randn(40, 24))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in params]
    kw = dict(lr=0.02, momentum=0.9, weight_decay=0.01, adjust_lr_fn=adjust_lr_fn)
    ours_opt = Muon(params, ns_dtype=torch.float32, **kw)
    ref = torch.optim.Muon(theirs, **kw)
    for seed in range(3):
        _grads(params, seed)
        _grads(theirs, seed)
        for group in ours_opt.param_groups:  # our loop, with PyTorch's bf16 iteration
            ours_opt._update_group(group, torch.bfloat16)
        ref.step()
    for a, b in zip(params, theirs, strict=True):
        assert torch.equal(a, b)


def test_float32_muon_makes_nearly_the_bf16_update():
    a = [torch.nn.Parameter(torch.randn(32, 64))]
    b = [torch.nn.Parameter(a[0].detach().clone())]
    opt32, opt16 = Muon(a, ns_dtype=torch.float32, lr=0.02), Muon(b, ns_dtype=torch.bfloat16, lr=0.02)
    start = a[0].detach().clone()
    _grads(a, 0)
    _grads(b, 0)
    opt32.step()
    opt16.step()
    moved = (a[0] - start).abs().max()
    assert moved > 1e-3 and (a[0] - b[0]).abs().max() < 0.05 * moved


def test_state_dict_round_trip_holds_every_optimizer():
    model = _model()
    opts = make_optimizer(model, TrainConfig(optimizer="muon"))
    x = torch.randint(0, 64, (2, 17))
    model(x[:, :-1], x[:, 1:])[1].backward()
    opts.step()
    other_model = copy.deepcopy(model)
    other = make_optimizer(other_model, TrainConfig(optimizer="muon"))
    other.load_state_dict(opts.state_dict())
    assert set(opts.state_dict()) == {"adamw", "muon"}
    bufs = [s["momentum_buffer"] for s in opts.optimizers["muon"].state.values()]
    assert bufs and all(torch.equal(a["momentum_buffer"], b) for a, b in
                        zip(other.optimizers["muon"].state.values(), bufs, strict=True))
    with pytest.raises(ValueError, match="holds optimizers"):
        make_optimizer(_model(), TrainConfig()).load_state_dict(opts.state_dict())


def test_a_checkpoint_with_one_adamw_state_still_loads():
    model = _model()
    plain = torch.optim.AdamW(model.parameters())
    opts = make_optimizer(model, TrainConfig())
    state = opts.optimizers["adamw"].state_dict()
    assert set(state) == {"state", "param_groups"} and len(plain.param_groups) == 1
    opts.load_state_dict(state)  # the format checkpoints had before Muon


def test_schedule_sets_each_groups_lr_and_muons_momentum():
    tc = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, warmup_steps=10, max_steps=100)
    opts: Optimizers = make_optimizer(_model(), tc)
    assert opts.schedule(4) == pytest.approx(5e-4)
    lrs = {name: [g["lr"] for g in o.param_groups] for name, o in opts.optimizers.items()}
    assert lrs["adamw"] == pytest.approx([5e-4] * len(lrs["adamw"])) and lrs["muon"] == pytest.approx([0.01])
    assert opts.optimizers["muon"].param_groups[0]["momentum"] == pytest.approx(0.85 + 0.1 * 4 / 300)
    assert math.isclose(opts.schedule(100), 1e-4)


def test_embed_lr_gives_the_embedding_tables_their_own_rate():
    model = _model(tie_embeddings=False)
    tc = TrainConfig(optimizer="muon", lr=4e-3, min_lr=4e-4, embed_lr=0.2, max_steps=10, warmup_steps=0)
    opts = make_optimizer(model, tc)
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr = {g["lr"]: {names[id(p)] for p in g["params"]} for g in opts.optimizers["adamw"].param_groups
             if g["lr"] == 0.2}
    assert by_lr == {0.2: {"transformer.wte.weight", "transformer.wpe.weight"}}
    opts.schedule(10)  # the end of the cosine: every group at min_lr/lr of its own peak
    assert sorted({round(g["lr"], 6) for g in opts.optimizers["adamw"].param_groups}) == [4e-4, 0.02]
    plain = make_optimizer(model, TrainConfig(lr=4e-3))  # embed_lr 0: one rate for all
    assert {g["lr"] for g in plain.optimizers["adamw"].param_groups} == {4e-3}
