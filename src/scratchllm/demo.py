"""`scratchllm demo`: the four stages on the complete works of Shakespeare, in minutes on a laptop CPU.

1. data: download the corpus into shards, learn a 4,096-token BPE on the training texts, write
   the token folder (validation = the last three plays, whole);
2. attention: the library's `MultiHeadAttention` is run both ways, its explicit path (scores,
   causal mask, softmax, weighted sum) against the fused `scaled_dot_product_attention` path;
3. architecture: a GPT in the speedruns' recipe (`tiny-modern`), the largest of DEMO_MODELS whose
   measured speed here makes MIN_STEPS steps in the budget;
4. training: in the fastest precision this machine has (bfloat16 on CPUs with bf16 instructions,
   else float32) for a time budget, with a schedule sized to fit it; then
   evaluation, a text sample and the loss curve;
5. with --chat, chat: a shorter pre-training, then fine-tuning on the Chit-Chat conversations
   (`scratchllm.chat.stage`), the held-out assistant loss before and after, the share of replies that
   end, and a few held-out openings answered.
Everything lands under one folder, printed at the end with the final numbers.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from scratchllm.util.log import REPORT, get_logger

logger = get_logger(__name__)

VOCAB_SIZE = 4096
VAL_PLAYS = 3
DEFAULT_MINUTES = 6.0  # training budget; the other stages take well under a minute together
# With --chat: pre-training's budget, and fine-tuning's share of it (12 minutes in all on 2 cores of an
# AVX2-only CPU, where the data stage, the evaluations and the replies take about two).
CHAT_MINUTES = 4.0
SFT_SHARE = 0.9
PROMPT = "To be, or not to be"
DEMO_PRESET = "tiny-modern"
# The demo's models, largest first, as changes to DEMO_PRESET: in a fixed time, a model too large for
# the machine makes too few steps to learn much, so the demo trains the largest that makes MIN_STEPS.
DEMO_MODELS = [
    [],  # 4 layers, 256 wide, context 256
    ["model.n_layer=3", "model.n_embd=192", "model.n_head=3"],
    ["model.n_layer=3", "model.n_embd=128", "model.n_head=4", "model.block_size=128"],
]
MIN_STEPS = 500


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def steps_per_second(cfg, tokens, n: int = 5, warmup: int = 2) -> float:
    """Measured optimizer steps a second of this config on this machine: the median of `n` steps
    after `warmup` (the first steps also fill the allocator's caches and run slow)."""
    import statistics

    import torch

    from scratchllm.runtime.distributed import pick_device
    from scratchllm.train.trainer import Trainer

    device = pick_device(cfg.train.device)
    trainer = Trainer(cfg, tokens, device=device)
    times = []
    for _ in range(warmup + n):
        t = time.perf_counter()
        trainer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1.0 / statistics.median(times[warmup:])


def choose_model(vocab_size: int, tokens, minutes: float, sets: Sequence[str] = ()):
    """(config, measured steps/s) of the largest model of DEMO_MODELS that makes MIN_STEPS steps in
    `minutes` on this machine, else the smallest: a slower machine trains a smaller model longer.
    `sets` apply to every candidate, before its speed is measured."""
    from scratchllm.config import build_config

    for shape in DEMO_MODELS:
        cfg = build_config(DEMO_PRESET, sets=[f"model.vocab_size={vocab_size}", *shape, *sets])
        rate = steps_per_second(cfg, tokens)
        if rate * minutes * 60 >= MIN_STEPS:
            break
    return cfg, rate


def plan_training(cfg, rate: float, minutes: float, val_tokens: int):
    """`cfg` with a schedule that fills `minutes` at `rate` steps/s, evaluating on all the held-out tokens."""
    from scratchllm.data.loader import val_batch_count

    # The schedule ends where the budget does (max_minutes stops it if the machine turns out slower),
    # less the five evaluations over the whole validation split: a forward pass costs about a third of a
    # training step. Samples and checkpoints take a few percent more.
    val_batches = val_batch_count(val_tokens, cfg.train.batch_size, cfg.model.block_size)
    steps = max(20, int(0.95 * rate * minutes * 60 - 5 * val_batches / 3))
    every = max(10, -(-steps // 4))  # rounded up: four evaluations after step 0, the last at the end
    return cfg.apply_sets([f"train.max_steps={steps}", f"train.max_minutes={minutes}",
                           f"train.eval_every={every}", f"train.ckpt_every={every}", "train.log_every=5",
                           "train.sample_tokens=64", f"train.eval_batches={val_batches}"])


def _attention_check() -> str:
    """Stage 2 in one line: the explicit multi-head attention equals the fused SDPA path."""
    import torch

    from scratchllm.model.attention import MultiHeadAttention

    torch.manual_seed(0)
    mha = MultiHeadAttention(d_in=64, d_out=64, context_length=16, dropout=0.0, num_heads=4).eval()
    x = torch.randn(2, 16, 64)
    with torch.no_grad():
        diff = (mha(x, use_sdpa=False) - mha(x, use_sdpa=True)).abs().max().item()
    return f"softmax(QK^T/sqrt(d) + causal mask) V, step by step, equals fused attention: max diff {diff:.1e}"


def prepare_data(source: str, out: Path, val_docs: int, vocab_size: int = VOCAB_SIZE, quiet: bool = False):
    """Stage 1 into `out`: raw/ shards, a BPE learned on all but the last `val_docs` documents in
    tokenizer/, and the token folder tokens/ with those documents held out; returns the tokenizer."""
    from scratchllm.data.download import download, iter_downloaded
    from scratchllm.data.sources import open_source
    from scratchllm.data.tokenize import tokenize_to_dir, train_tokenizer

    raw, tok_dir, data_dir = out / "raw", out / "tokenizer", out / "tokens"
    download(open_source(source), 100 * 10**6, raw, progress=not quiet)
    docs = list(iter_downloaded(raw))
    train_docs, held_out = docs[:-val_docs], docs[-val_docs:]
    tok = train_tokenizer([d.text for d in train_docs], vocab_size, tok_dir, quiet=quiet)
    logger.info(f"learned a {tok.vocab_size:,}-token BPE on {len(train_docs)} texts -> "
                f"{tok_dir / 'tokenizer.json'}", extra=REPORT)
    meta = tokenize_to_dir(raw, tok, data_dir, val_docs=val_docs, quiet=quiet)
    names = ", ".join(d.id for d in held_out[:3]) + (", ..." if len(held_out) > 3 else "")
    logger.info(f"tokens -> {data_dir}: train {meta['train']['tokens']:,}, val {meta['val']['tokens']:,} "
                f"({names})", extra=REPORT)
    return tok


def run_demo(out: str | Path = "demo", minutes: float | None = None, quiet: bool = False,
             sets: Sequence[str] = (), chat: bool = False) -> dict:
    """Run the whole pipeline into `out` (with `chat`, stage 5 too: `chat_demo`); print where everything
    went; return the final figures."""
    import torch

    from scratchllm.config import build_config
    from scratchllm.data.folder import TokenFolder
    from scratchllm.model.gpt import GPT
    from scratchllm.runtime.distributed import pick_device
    from scratchllm.runtime.precision import resolve
    from scratchllm.train.launch import train
    from scratchllm.util.errors import UserError

    out = Path(out)
    minutes = (CHAT_MINUTES if chat else DEFAULT_MINUTES) if minutes is None else minutes
    if minutes <= 0:
        raise UserError(f"--minutes must be positive, got {minutes}")
    build_config(DEMO_PRESET, sets=sets)  # a bad --set stops here, before the data stage
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)

    _say("== stage 1: data ==")
    raw, tok_dir, data_dir, run_dir = out / "raw", out / "tokenizer", out / "tokens", out / "run"
    tok = prepare_data("shakespeare", out, VAL_PLAYS, quiet=quiet)

    _say("== stage 2: attention ==")
    _say(_attention_check())

    _say("== stage 3: architecture ==")
    tokens = TokenFolder.open(data_dir)
    cfg, rate = choose_model(tok.vocab_size, tokens.train, minutes, sets)
    model = GPT(cfg.model)
    _say(f"GPT: {cfg.model.n_layer} layers, {cfg.model.n_head} heads, {cfg.model.n_embd} wide, context "
         f"{cfg.model.block_size}; {model.num_params() / 1e6:.2f}M parameters, "
         f"{model.flops_per_token() / 1e6:.1f} MFLOP per token (the largest of the demo's models that "
         f"makes {MIN_STEPS} steps in {minutes:g} minutes here)")
    del model

    _say("== stage 4: training ==")
    precision = resolve(cfg.train.dtype, pick_device(cfg.train.device))
    cfg = plan_training(cfg, rate, minutes, len(tokens.val))
    _say(f"{rate:.2f} steps/s measured here: {cfg.train.max_steps} steps of {cfg.train.batch_size} x "
         f"{cfg.model.block_size} tokens with {cfg.train.optimizer} in {precision.dtype} "
         f"({precision.reason}) fit {minutes:g} minutes")
    if run_dir.exists():
        _say(f"replacing the previous demo run in {run_dir}")
        shutil.rmtree(run_dir)
    summary = train(cfg, data_dir, run_dir, quiet=quiet)

    from scratchllm.run.load import load_run

    _, model, _ = load_run(run_dir)
    gen = torch.Generator().manual_seed(0)
    idx = torch.tensor([tok.encode(PROMPT)])
    text = tok.decode(model.generate(idx, 150, temperature=0.8, top_k=50, generator=gen)[0].tolist())
    with open(run_dir / "samples.txt", "a", encoding="utf-8") as f:
        f.write(f"--- final sample, prompt {PROMPT!r} ---\n{text}\n")

    total = (time.perf_counter() - t0) / 60
    _say("")
    _say("== outputs ==")
    for name, path in [("raw text shards", raw), ("tokenizer", tok_dir / "tokenizer.json"),
                       ("token files", data_dir), ("run (config, checkpoints)", run_dir),
                       ("metrics", run_dir / "metrics.jsonl"), ("loss curve", run_dir / "loss.png"),
                       ("samples", run_dir / "samples.txt")]:
        _say(f"  {name:<27} {path}")
    _say(f"final val loss {summary['val_loss']:.4f} nats/token, {summary['val_bpb']:.3f} bits per byte "
         f"after {summary['step']} steps ({summary['minutes']:.1f} min training, {total:.1f} min in all)")
    _say(f"sample:\n{text}")
    sys.stdout.flush()
    result = {**summary, "sample": text, "total_minutes": total, "steps_per_s": rate}
    if chat:
        result["chat"] = chat_demo(out, run_dir, SFT_SHARE * minutes, rate, quiet, sets)
        result["total_minutes"] = (time.perf_counter() - t0) / 60
        _say(f"{result['total_minutes']:.1f} min in all")
    return result


def chat_demo(out: Path, base: Path, minutes: float, rate: float, quiet: bool, sets: Sequence[str],
              n_prompts: int | None = None) -> dict:
    """Stage 5: fine-tune the run `base` on Chit-Chat into out/chat for `minutes`; print what it says."""
    from scratchllm.chat.stage import END_PROMPTS, MAX_REPLY, TEMPERATURE, chat_stage

    _say("")
    _say("== stage 5: chat ==")
    chat_dir = out / "chat"
    if chat_dir.exists():
        _say(f"replacing the previous chat run in {chat_dir}")
        shutil.rmtree(chat_dir)
    train_sets = [s for s in sets if s.strip().startswith("train.")]  # the model is the pre-trained one
    figures = chat_stage(base, chat_dir, minutes, rate, quiet, train_sets, n_prompts or END_PROMPTS)
    for prompt, answer in figures["conversation"]:
        _say(f"  user:      {prompt}")
        _say(f"  assistant: {answer}")
    speed = f", {figures['tok_per_s']:,.0f} tokens/s" if figures.get("tok_per_s") else ""
    _say(f"held-out assistant loss {figures['val_loss_before']:.3f} before fine-tuning, "
         f"{figures['val_loss']:.3f} after {figures['step']} steps ({figures['minutes']:.1f} min{speed})")
    _say(f"{figures['end_share']:.0%} of {figures['end_prompts']} held-out openings get a reply (temperature "
         f"{TEMPERATURE:g}) that ends with <|assistant_end|> within {MAX_REPLY} tokens; greedy replies: "
         f"{figures['end_share_greedy']:.0%}")
    _say(f"talk to it: scratchllm chat --run {chat_dir}, or scratchllm serve --run {chat_dir} and open "
         "http://127.0.0.1:8000/")
    return figures
