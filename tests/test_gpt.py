"""The GPT model: sizes, options, loss, KV-cache generation, sampling, saving, compile-friendliness."""

import itertools
import math

import pytest
import torch

from scratchllm.model.generate import KVCache, sample
from scratchllm.model.gpt import GPT, GPTConfig
from scratchllm.util.errors import UserError

V = 97


def small(**kw) -> GPTConfig:
    """A model small enough that every test runs in well under a second."""
    base = dict(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return GPTConfig(**{**base, **kw})


def spread(model: GPT) -> GPT:
    """Random weights with unit-scale activations, so greedy decoding is not one token repeated."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 if name.endswith(("wte.weight", "wpe.weight")) else p.shape[1] ** -0.5)
    return model.eval()


def test_gpt2_small_has_124m_parameters():
    with torch.device("meta"):
        model = GPT(GPTConfig.preset("gpt2-124m"))
    assert model.num_params() == 124_439_808  # GPT-2 small, tied head counted once
    assert model.num_params(exclude_positions=True) == 124_439_808 - 1024 * 768
    # 6N + 12·L·H·Q·T with N = 123,653,376, L = H = 12, Q = 64, T = 1024
    assert model.flops_per_token() == 6 * 123_653_376 + 12 * 12 * 12 * 64 * 1024 == 855_166_464
    assert model.estimate_mfu(1000.0, 855_166_464_000.0) == pytest.approx(1.0)


def test_presets_and_bad_configs():
    seed = GPTConfig.preset("seed")
    assert (seed.n_embd, seed.n_head, seed.n_layer, seed.block_size) == (256, 4, 4, 512)
    modern = GPTConfig.preset("modern-124m", vocab_size=1000)
    assert (modern.pos, modern.norm, modern.mlp, modern.qk_norm, modern.bias) == ("rope", "rmsnorm", "relu2",
                                                                                    True, False)
    assert modern.vocab_size == 1000 and modern.padded_vocab_size == 1024
    with torch.device("meta"):
        assert 1e6 < GPT(GPTConfig.preset("tiny", vocab_size=4096)).num_params() < 10e6
        assert 350e6 < GPT(GPTConfig.preset("gpt2-350m")).num_params() < 360e6
    for bad in (lambda: GPTConfig.preset("huge"), lambda: GPTConfig.preset("tiny", n_lyer=2),
                lambda: small(n_embd=30, n_head=4), lambda: small(norm="batchnorm"),
                lambda: small(pos="rope", n_embd=30, n_head=2)):
        with pytest.raises(UserError):
            bad()


def test_loss_is_mean_cross_entropy_and_starts_near_uniform():
    torch.manual_seed(0)
    model = GPT(small(pad_vocab_multiple=64))
    idx, targets = torch.randint(0, V, (3, 16)), torch.randint(0, V, (3, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 16, V)  # the 31 padding rows are not in the logits
    expected = -logits.log_softmax(-1).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(loss, expected)
    assert abs(loss.item() - math.log(V)) < 0.1  # small initial weights: nearly uniform predictions
    targets[:, :8] = -1  # ignored positions
    _, loss = model(idx, targets)
    torch.testing.assert_close(loss, -logits[:, 8:].log_softmax(-1).gather(-1, targets[:, 8:, None]).mean())
    assert model(idx)[1] is None


def test_gpt2_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(small(n_layer=8, n_embd=128, n_head=4))
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert model.lm_head.weight is model.transformer.wte.weight


OPTIONS = list(itertools.product(["layernorm", "rmsnorm"], ["learned", "sinusoidal", "rope"],
                                 ["gelu", "swiglu", "relu2"], [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("norm,pos,mlp,qk_norm,tie,bias", OPTIONS)
def test_every_option_combination_trains_and_is_causal(norm, pos, mlp, qk_norm, tie, bias):
    torch.manual_seed(0)
    model = GPT(small(n_layer=1, norm=norm, pos=pos, mlp=mlp, qk_norm=qk_norm, tie_embeddings=tie,
                      bias=bias, dropout=0.1, pad_vocab_multiple=8))
    idx = torch.randint(0, V, (2, 16))
    _, loss = model(idx, torch.roll(idx, -1, 1))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    model.eval()
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % V
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :9], b[:, :9], atol=1e-5, rtol=0)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
def test_cached_logits_equal_full_forward(pos):
    model = spread(GPT(small(pos=pos, qk_norm=pos == "rope")))
    idx = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    full = model(idx)[0]
    cache = KVCache(model.config.n_layer, 16)
    with torch.no_grad():
        steps = [model._logits(model._hidden(idx[:, :5], cache))]  # prefill 5 tokens
        steps += [model._logits(model._hidden(idx[:, t:t + 1], cache)) for t in range(5, 9)]
        steps.append(model._logits(model._hidden(idx[:, 9:], cache)))  # several tokens after a prefix
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    cache.reset()
    with torch.no_grad():  # the public face of the same: the distribution of the next token
        torch.testing.assert_close(model.next_logits(idx[:, :7], cache), full[:, 6], atol=1e-5, rtol=0)
        torch.testing.assert_close(model.next_logits(idx[:, 7:12], cache), full[:, 11], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
def test_greedy_generation_with_and_without_cache_is_identical(pos):
    model = spread(GPT(small(pos=pos, tie_embeddings=False)))
    prompt = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(0))  # longer than 16
    with_cache = model.generate(prompt, 40, temperature=0)  # ends far past the context length
    without = model.generate(prompt, 40, temperature=0, use_cache=False)
    assert with_cache.shape == (2, 60)
    assert torch.equal(with_cache, without)
    assert len(set(with_cache[0, 20:].tolist())) > 5  # a real sequence, not one token repeated
    # independent check of the sliding window: each token is the argmax over the last 16 tokens
    seq = with_cache[:1]
    for t in (20, 37, 59):
        assert seq[0, t].item() == model(seq[:, t - 16:t])[0][0, -1].argmax().item()


def test_sampling_is_seeded_and_streams_through_callback():
    model = spread(GPT(small(tie_embeddings=False)))
    prompt = torch.randint(0, V, (1, 4), generator=torch.Generator().manual_seed(0))
    runs = [model.generate(prompt, 30, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = model.generate(prompt, 30, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0], other)
    streamed = []
    out = model.generate(prompt, 12, temperature=0, callback=lambda tok: streamed.append(tok.item()))
    assert streamed == out[0, 4:].tolist()
    assert torch.equal(model.generate(prompt, 12, temperature=1.0, top_k=1), out)
    assert torch.equal(model.generate(prompt, 12, temperature=1.0, top_p=1e-6), out)


def test_generation_stops_at_end_of_text():
    model = spread(GPT(small(tie_embeddings=False)))
    prompt = torch.randint(0, V, (1, 4), generator=torch.Generator().manual_seed(0))
    greedy = model.generate(prompt, 20, temperature=0)[0, 4:].tolist()
    eot = greedy[5]
    stop = greedy.index(eot)
    out = model.generate(prompt, 20, temperature=0, eot=eot)
    assert out[0, 4:].tolist() == greedy[:stop + 1]
    # with two rows, the finished row is held at eot while the other continues
    both = model.generate(torch.cat([prompt, prompt.flip(1)]), 20, temperature=0, eot=eot)
    assert both[0, 4 + stop:].eq(eot).all()
    alone = model.generate(prompt.flip(1), 20, temperature=0, eot=eot)[0]
    assert both.size(1) == 4 + (stop + 1 if alone.size(0) < both.size(1) else 20)
    assert both[1, :alone.size(0)].tolist() == alone.tolist()  # the other row went on as if alone


def test_top_k_and_top_p_keep_only_the_likeliest_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    cases = ((dict(top_k=2), {0, 1}), (dict(top_p=0.7), {0, 1}), (dict(top_p=0.85), {0, 1, 2}))
    for kwargs, allowed in cases:
        seen = set(sample(logits, 1.0, generator=g, **kwargs).tolist())
        assert seen == allowed, kwargs
    counts = torch.bincount(sample(logits, 1.0, generator=g), minlength=4) / 2000
    torch.testing.assert_close(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.04, rtol=0)
    assert sample(logits[:1], 0).item() == 0


def test_sampling_arguments():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 5.0]])
    assert sample(logits, 1e-45).tolist() == [1, 2]  # a tiny temperature is greedy, not NaN
    assert sample(logits * 1e30, 1e-30).tolist() == [1, 2]
    for bad in (dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5), dict(temperature=float("nan")),
                dict(temperature=-1.0)):
        with pytest.raises(ValueError):
            sample(logits, **{"temperature": 1.0, **bad})


def test_sinusoidal_positions_need_an_even_width_not_an_even_head():
    model = GPT(small(pos="sinusoidal", n_embd=48, n_head=16))  # head size 3
    assert model(torch.zeros(1, 4, dtype=torch.long))[0].shape == (1, 4, V)
    with pytest.raises(UserError, match="even n_embd"):
        small(pos="sinusoidal", n_embd=45, n_head=5)
    with pytest.raises(UserError, match="even head size"):
        small(pos="rope", n_embd=48, n_head=16)


def test_padded_vocabulary_is_never_sampled():
    model = GPT(small(pad_vocab_multiple=64)).eval()
    with torch.no_grad():
        model.transformer.wte.weight[V:] = 100.0  # padding rows that would win every argmax
    out = model.generate(torch.zeros(4, 1, dtype=torch.long), 10, temperature=2.0)
    assert out.max().item() < V


@pytest.mark.parametrize("settings", [{"temperature": 1e-300}, {"temperature": 1e-45}, {"top_p": 1e-300},
                                      {"temperature": 1e-300, "top_p": 1e-300, "top_k": 5}])
def test_a_tiny_temperature_or_top_p_picks_the_likeliest_token(settings):
    logits = torch.randn(8, V, generator=torch.Generator().manual_seed(0)) * 10
    got = sample(logits, **{"temperature": 1.0, **settings}, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, logits.argmax(dim=-1))


def test_generate_restores_training_mode():
    model = GPT(small(dropout=0.5)).train()
    model.generate(torch.zeros(1, 1, dtype=torch.long), 3)
    assert model.training


def test_tied_weights_survive_state_dict_and_safetensors(tmp_path):
    from safetensors.torch import load_model, save_model

    model = spread(GPT(small(pad_vocab_multiple=64)))
    idx = torch.randint(0, V, (1, 16))
    save_model(model, str(tmp_path / "model.safetensors"))
    fresh = GPT(small(pad_vocab_multiple=64)).eval()
    load_model(fresh, str(tmp_path / "model.safetensors"))
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    torch.testing.assert_close(fresh(idx)[0], model(idx)[0], atol=0, rtol=0)
    other = GPT(small(pad_vocab_multiple=64)).eval()
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other(idx)[0], model(idx)[0], atol=0, rtol=0)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_forward_has_no_graph_breaks(pos):
    model = GPT(small(pos=pos, qk_norm=True, dropout=0.1))
    idx = torch.randint(0, V, (2, 16))
    explanation = torch._dynamo.explain(model)(idx, idx)
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_bfloat16_autocast_loss_close_to_float32():
    torch.manual_seed(0)
    model = GPT(small(pos="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True))
    idx = torch.randint(0, V, (2, 16))
    _, loss32 = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss16 = model(idx, idx)
    assert logits.dtype == torch.bfloat16 and loss16.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) < 0.05


@pytest.mark.slow
def test_modern_124m_loss_falls_on_random_data():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("modern-124m", vocab_size=512, block_size=16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    idx = torch.randint(0, 512, (2, 17))
    losses = []
    for _ in range(3):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses


def test_model_info_command(run_cli):
    result = run_cli("model", "info", "--preset", "gpt2-124m", "--set", "model.dropout=0.1")
    assert result.returncode == 0, result.stderr
    assert "parameters: 124,439,808" in result.stdout
    assert "FLOPs per token" in result.stdout and "855,166,464" in result.stdout
    assert "dropout=0.1" in result.stdout
    bad = run_cli("model", "info", "--preset", "tiny", "--set", "model.n_head=3")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["scratchllm: error: model.n_embd (256) must be divisible by "
                                               "model.n_head (3)"]
    train_key = run_cli("model", "info", "--preset", "tiny", "--set", "train.lr=1e-3")
    assert train_key.returncode == 2 and "only model.* keys apply here" in train_key.stderr


def test_zero_initialised_projections_make_every_block_the_identity():
    torch.manual_seed(0)
    model = GPT(small(zero_init_proj=True, tie_embeddings=False)).eval()
    zeros = [n for n, p in model.named_parameters() if n.endswith("c_proj.weight") or n == "lm_head.weight"]
    assert len(zeros) == 2 * 2 + 1 and all(not model.get_parameter(n).any() for n in zeros)
    idx = torch.randint(0, V, (2, 16))
    x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(16))
    torch.testing.assert_close(model._hidden(idx), model.transformer.ln_f(x))  # blocks add nothing yet
    assert model(idx, idx)[1].item() == pytest.approx(math.log(V), abs=1e-6)  # a zero head: uniform
    tied = GPT(small(zero_init_proj=True))
    assert tied.lm_head.weight.std() > 0.01  # tied to the embedding, which must not start at zero


def test_logit_softcap_bounds_the_logits_smoothly():
    raw, capped = spread(GPT(small())), spread(GPT(small(logit_softcap=20.0)))
    idx = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    a, b = raw(idx)[0], capped(idx)[0]
    assert a.abs().max() > 20.0 and b.abs().max() < 20.0
    torch.testing.assert_close(b, 20.0 * torch.tanh(a / 20.0))
    with pytest.raises(UserError, match="logit_softcap"):
        small(logit_softcap=-1.0)


def test_unet_skips_feed_the_first_half_into_the_second():
    plain, skips = spread(GPT(small(n_layer=4))), GPT(small(n_layer=4, unet_skips=True))
    missing = skips.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["skip_weights"] and skips.skip_weights.tolist() == [1.0, 1.0]
    idx = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(plain(idx)[0], skips.eval()(idx)[0])
    with torch.no_grad():
        skips.skip_weights.zero_()  # without the skips it is the plain model
    torch.testing.assert_close(plain(idx)[0], skips(idx)[0])


@pytest.mark.parametrize("options", [
    dict(unet_skips=True, n_layer=3), dict(zero_init_proj=True, logit_softcap=15.0),
    dict(unet_skips=True, zero_init_proj=True, logit_softcap=30.0, n_layer=4)])
def test_speedrun_options_train_stay_causal_and_cache_exactly(options):
    torch.manual_seed(0)
    model = GPT(small(pos="rope", norm="rmsnorm", qk_norm=True, mlp="relu2", tie_embeddings=False, **options))
    idx = torch.randint(0, V, (2, 16))
    model(idx, torch.roll(idx, -1, 1))[1].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model = spread(model)
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % V
    torch.testing.assert_close(model(idx)[0][:, :9], model(changed)[0][:, :9], atol=1e-5, rtol=0)
    prompt = idx[:, :4]
    assert torch.equal(model.generate(prompt, 20, temperature=0), model.generate(prompt, 20, temperature=0,
                                                                                 use_cache=False))


@pytest.mark.parametrize("options", [
    {}, {"tie_embeddings": False}, {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False},
    {"pos": "sinusoidal", "unet_skips": True, "n_layer": 4},
    {"mlp": "relu2", "qk_norm": True, "embed_norm": True},
])
def test_parameter_groups_hold_every_parameter_once(options):
    model = GPT(small(**options))
    groups = model.param_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    order = [id(p) for p in model.parameters()]
    for g in groups.values():  # each group in the model's own order (the optimizer state's order)
        assert [order.index(id(p)) for p in g] == sorted(order.index(id(p)) for p in g)
    named = dict(model.named_parameters())
    assert {id(p) for p in groups["matrices"]} == {id(p) for n, p in named.items()
                                                   if n.startswith("transformer.h.") and p.ndim == 2}
    head = [] if model.config.tie_embeddings else [id(model.lm_head.weight)]
    assert [id(p) for p in groups["head"]] == head
    assert all(p.ndim < 2 for p in groups["vectors"])
    model.register_parameter("stray", torch.nn.Parameter(torch.zeros(2, 2)))  # a matrix outside the blocks
    with pytest.raises(AssertionError, match="stray .* has no group"):
        model.param_groups()


def test_each_option_is_a_module_chosen_when_the_model_is_built():
    from scratchllm.model.gpt import MLP, RMS, ReLU2MLP, SwiGLU

    kinds = {"gelu": MLP, "relu2": ReLU2MLP, "swiglu": SwiGLU}
    for mlp, cls in kinds.items():
        assert type(GPT(small(mlp=mlp)).transformer.h[0].mlp) is cls
    plain, modern = GPT(small()), GPT(small(qk_norm=True, embed_norm=True))
    assert isinstance(plain.embed_norm, torch.nn.Identity) and isinstance(modern.embed_norm, RMS)
    assert isinstance(modern.transformer.h[0].attn.qk_norm, RMS)
