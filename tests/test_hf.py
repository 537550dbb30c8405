"""Exact conversion to and from transformers' GPT2LMHeadModel, the independent reference for the model."""

import pytest
import torch

from scratchllm.model.gpt import GPT, GPTConfig
from scratchllm.model.hf import from_hf, to_hf
from scratchllm.util.errors import UserError

transformers = pytest.importorskip("transformers")


def randomised(config: GPTConfig) -> GPT:
    """A model whose every weight (biases and norms too) is random, so a mis-mapped tensor shows."""
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def reference(config: GPTConfig, attn: str = "sdpa"):
    """transformers' own GPT-2 with random weights of its own initialisation."""
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, bos_token_id=0, eos_token_id=0))
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.config._attn_implementation = attn
    return hf.eval()


def compare(ours: GPT, hf, idx: torch.Tensor, tol: float = 1e-4) -> float:
    """Assert equal logits and loss; return the largest logit difference."""
    with torch.no_grad():
        logits, loss = ours(idx[:, :-1], idx[:, 1:])
        out = hf(idx, labels=idx)  # transformers shifts the labels itself
    diff = (logits - out.logits[:, :-1]).abs().max().item()
    assert diff < tol, diff
    torch.testing.assert_close(loss, out.loss, atol=1e-5, rtol=0)
    return diff


SMALL = dict(vocab_size=300, block_size=32, n_layer=2, n_head=4, n_embd=64)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_our_model_to_transformers(attn):
    model = randomised(GPTConfig(**SMALL))
    hf = to_hf(model)
    hf.config._attn_implementation = attn
    assert hf.transformer.wte.weight.data_ptr() == hf.lm_head.weight.data_ptr()  # still tied
    compare(model, hf, torch.randint(0, 300, (2, 32)))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_transformers_to_our_model(attn):
    hf = reference(GPTConfig(**SMALL), attn)
    model = from_hf(hf).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    compare(model, hf, torch.randint(0, 300, (2, 32)))


@pytest.mark.parametrize("kw", [dict(pad_vocab_multiple=64), dict(tie_embeddings=False), dict(bias=False)])
def test_variants_convert_exactly(kw):
    model = randomised(GPTConfig(**SMALL, **kw))
    hf = to_hf(model)
    assert hf.lm_head.weight.shape == (300, 64)  # padding rows stay behind
    compare(model, hf, torch.randint(0, 300, (2, 32)))
    back = from_hf(hf, pad_vocab_multiple=kw.get("pad_vocab_multiple", 1)).eval()
    assert back.config.padded_vocab_size == model.config.padded_vocab_size
    assert back.config.tie_embeddings == model.config.tie_embeddings
    compare(back, hf, torch.randint(0, 300, (2, 32)))


def test_greedy_generation_matches_transformers():
    model = randomised(GPTConfig(**SMALL, tie_embeddings=False))
    hf = to_hf(model)
    prompt = torch.randint(0, 300, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20,
                             do_sample=False, pad_token_id=0)
    ours = model.generate(prompt, 20, temperature=0)
    assert torch.equal(ours, theirs)


def test_from_pretrained_folder_round_trip(tmp_path):
    model = randomised(GPTConfig(**SMALL))
    to_hf(model).save_pretrained(tmp_path)
    loaded = from_hf(transformers.GPT2LMHeadModel.from_pretrained(tmp_path)).eval()
    idx = torch.randint(0, 300, (1, 32))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], atol=0, rtol=0)


@pytest.mark.parametrize("kw", [dict(pos="rope"), dict(pos="sinusoidal"), dict(norm="rmsnorm"),
                                dict(mlp="swiglu"), dict(mlp="relu2"), dict(qk_norm=True),
                                dict(logit_softcap=15.0), dict(unet_skips=True)])
def test_non_gpt2_options_refuse_to_convert(kw):
    with pytest.raises(UserError, match="GPT-2") as e:
        to_hf(GPT(GPTConfig(**SMALL, **kw)))
    assert "\n" not in str(e.value) and next(iter(kw)) in str(e.value)


def test_zero_initialised_projections_still_convert():
    model = randomised(GPTConfig(**SMALL, zero_init_proj=True))
    idx = torch.randint(0, 300, (1, 32))
    torch.testing.assert_close(to_hf(model)(idx).logits, model(idx)[0], atol=1e-5, rtol=0)


def test_other_gpt2_variants_refuse_to_load():
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=300, n_positions=32, n_embd=64, n_layer=1, n_head=4, activation_function="relu",
        bos_token_id=0, eos_token_id=0))
    with pytest.raises(UserError, match="activation"):
        from_hf(hf)


@pytest.mark.slow
def test_gpt2_124m_parity_both_ways():
    config = GPTConfig.preset("gpt2-124m")
    idx = torch.randint(0, config.vocab_size, (1, 128), generator=torch.Generator().manual_seed(0))
    model = randomised(config)
    hf = to_hf(model)
    assert sum(p.numel() for p in hf.parameters()) == model.num_params() == 124_439_808
    compare(model, hf, idx)
    del model, hf
    hf = reference(config)
    compare(from_hf(hf).eval(), hf, idx)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_conversion_keeps_the_dtype(dtype):
    hf = reference(GPTConfig(**SMALL)).to(dtype)
    ours = from_hf(hf)
    assert {p.dtype for p in ours.parameters()} == {dtype}
    assert torch.equal(ours.transformer.h[0].mlp.c_fc.weight, hf.transformer.h[0].mlp.c_fc.weight.t())
    back = to_hf(ours)
    assert {p.dtype for p in back.parameters()} == {dtype}
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), hf.state_dict().values(),
                                                   strict=True))


def test_gpt2_without_its_head_is_refused():
    body = transformers.GPT2Model(transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=64,
                                                          n_layer=1, n_head=4))
    with pytest.raises(UserError, match="needs a GPT2LMHeadModel"):
        from_hf(body)


def test_from_hf_returns_an_eval_mode_model():
    hf = reference(GPTConfig(**SMALL))  # GPT-2's config has dropout 0.1
    model = from_hf(hf)
    idx = torch.randint(0, 300, (1, 32))
    assert not model.training
    torch.testing.assert_close(model(idx)[0], model(idx)[0], atol=0, rtol=0)  # no dropout noise


def test_export_reads_its_format(tmp_path):
    from scratchllm.run.export import FORMATS, export_run

    assert list(FORMATS) == ["hf"]
    with pytest.raises(UserError, match="--format 'onnx': use hf"):
        export_run(tmp_path / "run", tmp_path / "out", "onnx")
    assert not (tmp_path / "out").exists()
