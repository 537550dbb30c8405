"""The `scratchllm` command: parses arguments, calls the library, prints, turns user errors into one line.

Heavy libraries (torch, datasets, transformers) are imported inside the command functions so that
`scratchllm --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from scratchllm.config import DEFAULT_PRESET, PRESETS
from scratchllm.util.errors import UserError, one_line
from scratchllm.util.log import main_rank, setup_logging

# --- stage 1: data -------------------------------------------------------------------------


def cmd_estimate(args) -> int:
    import json

    from scratchllm.data.estimate import describe, estimate
    from scratchllm.data.sources import open_source
    from scratchllm.util.sizes import parse_size

    target = parse_size(args.target)
    source = open_source(args.source)
    result = estimate(source, target, sample_docs=args.sample_docs, seed=args.seed,
                      progress=not args.quiet and not args.json)
    print(json.dumps(result.to_json()) if args.json else describe(result))
    return 0


def cmd_download(args) -> int:
    from scratchllm.data.download import download
    from scratchllm.data.sources import open_source
    from scratchllm.util.sizes import parse_size

    target = parse_size(args.target)
    shard_size = parse_size(args.shard_size)
    min_free = parse_size(args.min_free) if args.min_free is not None else None
    keep = [c.strip() for c in args.keep_columns.split(",") if c.strip()]
    download(open_source(args.source), target, args.out, shard_size=shard_size, min_free=min_free,
             keep_columns=keep, progress=not args.quiet)
    return 0


def _tokenizer_input(args):
    """--data DIR (a download folder, as a Path) or --source SPEC (default shakespeare)."""
    from pathlib import Path

    return Path(args.data) if args.data else (args.source or "shakespeare")


def cmd_tokenizer_train(args) -> int:
    import time

    from scratchllm.data.tokenize import train_tokenizer
    from scratchllm.tokenizer.chat import CHAT_TOKENS
    from scratchllm.util.sizes import parse_size

    if args.vocab_size < 258 + len(CHAT_TOKENS):
        raise UserError(f"--vocab-size must be at least {258 + len(CHAT_TOKENS)} (256 bytes, one merge, "
                        f"<|endoftext|> and the {len(CHAT_TOKENS)} chat tokens), "
                        f"got {args.vocab_size}")
    max_bytes = parse_size(args.max_bytes) if args.max_bytes else None
    start = time.perf_counter()
    tok = train_tokenizer(_tokenizer_input(args), args.vocab_size, args.out, pattern=args.pattern,
                          max_bytes=max_bytes, workers=args.workers, quiet=args.quiet)
    if tok.vocab_size < args.vocab_size:
        print(f"scratchllm: note: the text ran out of pairs to merge; vocab is {tok.vocab_size:,}, "
              f"not {args.vocab_size:,}", file=sys.stderr)
    if not args.quiet:
        print(f"learned {tok.vocab_size - 256 - len(tok.special_tokens):,} merges "
              f"(vocab {tok.vocab_size:,}) in {time.perf_counter() - start:.1f} s "
              f"-> {args.out}/tokenizer.json")
    return 0


def cmd_tokenize(args) -> int:
    from scratchllm.data.tokenize import tokenize_to_dir
    from scratchllm.util.sizes import parse_size

    min_free = parse_size(args.min_free) if args.min_free is not None else None
    meta = tokenize_to_dir(_tokenizer_input(args), args.tokenizer, args.out, val_docs=args.val_docs,
                           val_fraction=args.val_fraction, workers=args.workers, quiet=args.quiet,
                           shard_tokens=args.shard_tokens, min_free=min_free)
    if not args.quiet:
        tr, va = meta["train"], meta["val"]
        shards = {s: sum(e["split"] == s for e in meta["shards"]) for s in ("train", "val")}
        print(f"train: {tr['tokens']:,} tokens from {tr['documents']:,} documents in {shards['train']} "
              f"shard(s); val: {va['tokens']:,} tokens from {va['documents']:,} documents in "
              f"{shards['val']}; "
              f"{(tr['bytes'] + va['bytes']) / max(1, tr['tokens'] + va['tokens']):.2f} bytes/token "
              f"({meta['tokenizer']}, {meta['seconds']:.1f} s) -> {args.out}")
    return 0


# --- stages 3 and 4: model, training ---------------------------------------------------------


def cmd_model_info(args) -> int:
    import dataclasses

    import torch
    import torchinfo

    from scratchllm.config import Config
    from scratchllm.model.gpt import GPT

    config = Config.preset(args.preset).apply_sets(args.set, sections=("model",)).model
    with torch.device("meta"):  # shapes only: no memory, no time spent on random weights
        model = GPT(config)
        idx = torch.zeros(1, config.block_size, dtype=torch.long)
    summary = torchinfo.summary(model, input_data=idx, depth=3, verbose=0, device="meta",
                                col_names=("output_size", "num_params"), row_settings=("var_names",))
    n, n_pos = model.num_params(), model.num_params(exclude_positions=True)
    print(summary)
    print(f"preset {args.preset}: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()))
    tied = " (tied embedding and head counted once)" if config.tie_embeddings else ""
    print(f"parameters: {n:,}{tied}")
    print(f"parameters without position embeddings: {n_pos:,}")
    print(f"training FLOPs per token (6N + 12·L·H·Q·T, T={config.block_size}): {model.flops_per_token():,}")
    print(f"weights: {n * 4 / 1e6:,.1f} MB in float32, {n * 2 / 1e6:,.1f} MB in bfloat16")
    return 0


def cmd_train(args) -> int:
    from scratchllm.train import train
    from scratchllm.train.run_config import run_config

    if args.init and (args.preset or args.config or any(s.strip().startswith("model.") for s in args.set)):
        raise UserError("--init brings its model: drop --preset, --config and model.* keys (train.* apply)")
    cfg = run_config(args.out, args.resume, args.preset, args.config, args.set, args.max_steps,
                     args.max_minutes)
    summary = train(cfg, args.data, args.out, resume=args.resume, quiet=args.quiet, verify=args.verify,
                    tokenizer=args.tokenizer, init=args.init)
    if main_rank():
        val = f", val loss {summary['val_loss']:.4f}" if summary.get("val_loss") is not None else ""
        bpb = f", {summary['val_bpb']:.3f} bits/byte" if "val_bpb" in summary else ""
        print(f"{summary['run']}: step {summary['step']}{val}{bpb} ({summary['stop_reason']})")
    return 0


def cmd_eval(args) -> int:
    import json

    from scratchllm.eval.runs import describe, evaluate_run

    out = evaluate_run(args.run, task=args.task, data=args.data, data_file=args.data_file, limit=args.limit,
                       quiet=args.quiet)
    if out is not None:  # rank 0 of a torchrun job, or the only process
        print(json.dumps(out) if args.json else describe(out))
    return 0


def cmd_generate(args) -> int:
    import math

    import torch

    from scratchllm.run.load import load_run, run_tokenizer
    from scratchllm.runtime.distributed import pick_device

    if (args.max_new_tokens < 0 or not 0 <= args.temperature < math.inf or not 0 < args.top_p <= 1
            or args.top_k < 0):
        raise UserError("need --max-new-tokens >= 0, a finite --temperature >= 0, 0 < --top-p <= 1, "
                        "--top-k >= 0")
    if not 0 <= args.seed < 2**63:
        raise UserError(f"--seed must be in [0, 2**63), got {args.seed}")
    # A terminal or file that cannot show a character gets U+FFFD rather than a crash mid-text.
    if hasattr(sys.stdout, "reconfigure"):  # a real text stream (not a test's capture)
        sys.stdout.reconfigure(errors="replace")
    device = pick_device("auto")
    cfg, model, _ = load_run(args.run, device)
    tok = run_tokenizer(args.run, cfg)
    prompt = tok.encode(args.prompt) or [tok.eot_id]
    idx = torch.tensor([prompt], device=device)
    made: list[int] = []
    shown = 0
    sys.stdout.write(args.prompt)

    def stream(column):
        # Print as soon as the bytes so far decode cleanly (a character can span several tokens).
        nonlocal shown
        if int(column[0]) == tok.eot_id:  # the end of the document: generation stops there
            return
        made.append(int(column[0]))
        text = tok.decode(made)
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[shown:])
            sys.stdout.flush()
            shown = len(text)

    gen = torch.Generator(device=device).manual_seed(args.seed)
    model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                   top_p=args.top_p, use_cache=not args.no_cache, eot=tok.eot_id, generator=gen,
                   callback=stream)
    sys.stdout.write(tok.decode(made)[shown:] + "\n")
    return 0


def cmd_export(args) -> int:
    from scratchllm.run.export import export_run

    out, path, with_tokenizer = export_run(args.run, args.out, args.format, quiet=args.quiet)
    note = "with tokenizer files" if with_tokenizer else "no tokenizer files (the run has no tokenizer)"
    print(f"wrote {out} ({path.name}, {note}); load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def cmd_demo(args) -> int:
    from scratchllm.demo import run_demo

    run_demo(args.out, minutes=args.minutes, quiet=args.quiet, sets=args.set, chat=args.chat)
    return 0


# --- stage 5: chat -----------------------------------------------------------------------------


def cmd_sft(args) -> int:
    from scratchllm.chat.sft import sft, sft_config

    cfg = sft_config(args.out, args.resume, args.set, args.max_steps, args.max_minutes)
    if args.val_conversations is not None:
        cfg = cfg.update({"train": {"val_conversations": args.val_conversations}}, "--val-conversations")
    dropout = [s.partition("=")[2] for s in args.set if s.partition("=")[0].strip() == "model.dropout"]
    sft(cfg, args.init, args.data, args.out, resume=args.resume, quiet=args.quiet,
        dropout=cfg.model.dropout if dropout else None)
    return 0


def cmd_chat(args) -> int:
    from scratchllm.chat.engine import Sampling
    from scratchllm.chat.terminal import run_chat

    run_chat(args.run, Sampling(temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p,
                                max_new_tokens=args.max_new_tokens, seed=args.seed), args.system)
    return 0


def cmd_serve(args) -> int:
    from scratchllm.chat.server import serve

    serve(args.run, args.host, args.port, args.slots)
    return 0


# --- the parser --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with a usage mistake as one line, `scratchllm: error: ...`, and exit status 2, as every
    other mistake (argparse would print the whole usage first); `--help` is argparse's own."""

    def error(self, message: str) -> NoReturn:
        """Print the one line and exit with status 2."""
        self.exit(2, f"scratchllm: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full command-line interface: every command, its flags and their help."""
    common = _Parser(add_help=False)
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars, only results and errors")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")

    parser = _Parser(
        prog="scratchllm",
        description="Build a GPT-style language model from scratch: data, tokenizer, model, training.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, func, help, parent=sub):
        p = parent.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=func)
        return p

    def group(name, help, dest):  # a command with actions of its own: `tokenizer train`, `model info`
        return sub.add_parser(name, help=help, parents=[common]).add_subparsers(
            dest=dest, metavar="ACTION", required=True)

    _data_commands(add, group)
    _run_commands(add, group)
    _chat_commands(add, group)
    _talk_commands(add, group)
    return parser


def _data_commands(add, group) -> None:
    """Stage 1: estimate, download, tokenizer train, tokenize."""
    p = add("estimate", cmd_estimate, "estimate how many documents make a target size")
    p.add_argument("--source", default="shakespeare", help="shakespeare | hf:OWNER/NAME[:CONFIG] | "
                   "parquet:GLOB | jsonl:GLOB | text:GLOB (default: shakespeare)")
    p.add_argument("--target", default="10GB", help="target size, e.g. 500MB, 10GB (default: 10GB)")
    p.add_argument("--sample-docs", type=int, default=1000, help="documents to sample (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reservoir sample (default: 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add("download", cmd_download, "stream documents into parquet shards, resumable")
    p.add_argument("--source", default="shakespeare", help="source spec (default: shakespeare)")
    p.add_argument("--target", default="10GB", help="bytes of text to save (default: 10GB)")
    p.add_argument("--out", required=True, help="output folder for shards and manifest.json")
    p.add_argument("--shard-size", default="100MB", help="about this much text a shard (default: 100MB)")
    p.add_argument("--min-free", default=None,
                   help="stop when less disk would stay free (default: 1GB or 5%% of the disk)")
    p.add_argument("--keep-columns", default="",
                   help="comma-separated extra source columns to keep beside id and text")

    p = add("train", cmd_tokenizer_train, "learn a byte-level BPE tokenizer",
            parent=group("tokenizer", "learn a BPE tokenizer from a source", "tokenizer_command"))
    _corpus_arguments(p)
    p.add_argument("--vocab-size", type=int, required=True, help="bytes + merges + special tokens")
    p.add_argument("--out", required=True, help="folder for tokenizer.json")
    p.add_argument("--pattern", choices=["gpt4", "gpt2"], default="gpt4",
                   help="pre-tokenization split pattern (default: gpt4)")
    p.add_argument("--max-bytes", default=None, help="learn from at most this much text")
    p.add_argument("--workers", type=int, default=None, help="processes counting chunks (default: cores)")

    p = add("tokenize", cmd_tokenize, "encode documents into train and val token shards (resumable)")
    _corpus_arguments(p)
    p.add_argument("--tokenizer", required=True,
                   help="a tokenizer folder, or a pretrained name: gpt2, cl100k_base, o200k_base")
    p.add_argument("--out", required=True, help="folder for the shards, meta.json and tokenizer.json")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--val-docs", type=int, default=None,
                       help="hold out the last N documents (the first N of a stream of unknown length)")
    split.add_argument("--val-fraction", type=float, default=None,
                       help="hold out this fraction of the documents, from the end")
    p.add_argument("--shard-tokens", type=int, default=100_000_000,
                   help="tokens per shard at most (default: 100,000,000, as llm.c shards FineWeb)")
    p.add_argument("--min-free", default=None,
                   help="disk space to leave free (default: 1GB or 5%% of the disk)")
    p.add_argument("--workers", type=int, default=None, help="encoding processes (default: cores)")


def _corpus_arguments(p) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--source", default=None, help="source spec (default: shakespeare)")
    src.add_argument("--data", default=None, help="a `download` output folder")


def _run_commands(add, group) -> None:
    """Stages 3 and 4: model info, train, eval, generate, export, demo."""
    presets = " | ".join(PRESETS)
    p = add("info", cmd_model_info, "summary, parameters and FLOPs of a preset",
            parent=group("model", "inspect model presets", "model_command"))
    p.add_argument("--preset", required=True, help=presets)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model field, e.g. --set model.n_layer=2")

    p = add("train", cmd_train, "train a GPT on token files")
    p.add_argument("--data", required=True,
                   help="a token folder (from `scratchllm tokenize`, or llm.c / modded-nanogpt shards)")
    p.add_argument("--out", required=True, help="run folder (runs/NAME)")
    p.add_argument("--preset", default=None, help=f"{presets} (default: {DEFAULT_PRESET})")
    p.add_argument("--config", default=None, help="a TOML config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint")
    p.add_argument("--max-steps", type=int, default=None,
                   help="optimizer steps of the run; the learning-rate schedule ends there")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this many minutes")
    p.add_argument("--verify", action="store_true",
                   help="check every token id and shard hash first, whatever meta.json records")
    p.add_argument("--tokenizer", default=None,
                   help="the tokenizer of a folder without meta.json (llm.c / modded-nanogpt shards: gpt2)")
    p.add_argument("--init", default=None, metavar="SRC",
                   help="start from the weights and tokenizer of a run, an export or a transformers GPT-2 "
                        "folder (the data must be tokens of that tokenizer); the optimizer starts fresh")

    p = add("eval", cmd_eval, "measure a run: held-out loss, HellaSwag, BIG-bench tasks, a CORE-style score")
    p.add_argument("--run", required=True, help="run folder, or a transformers folder (for tasks)")
    p.add_argument("--task", default="loss", metavar="TASK",
                   help="loss | hellaswag | hellaswag_zeroshot | hellaswag_10shot | bigbench:NAME | core "
                        "(default: loss, the held-out loss)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="token folder for the loss (default: the one the run used)")
    p.add_argument("--data-file", default=None, metavar="PATH",
                   help="a local copy of a task's data: HellaSwag's JSONL (hellaswag tasks, core) or a "
                        "BIG-bench task.json (bigbench:NAME)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="score at most N items a task (a fixed random sample)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add("generate", cmd_generate, "generate text from a trained run")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200,
                   help="tokens to add at most; stops early at <|endoftext|> (default: 200)")
    _sampling_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    p.add_argument("--no-cache", action="store_true", help="recompute attention without a KV cache")

    p = add("export", cmd_export, "write a run's model in another format")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--format", choices=["hf"], default="hf", help="hf: a transformers folder")
    p.add_argument("--out", required=True, help="output folder")

    p = add("demo", cmd_demo, "run all four stages on the built-in corpus")
    p.add_argument("--out", default="demo", help="folder for everything the demo makes (default: demo)")
    p.add_argument("--minutes", type=float, default=None,
                   help="training time budget in minutes (default: 6; with --chat 4, and 90%% of it more "
                        "to fine-tune)")
    p.add_argument("--chat", action="store_true",
                   help="then fine-tune on the Chit-Chat conversations and talk to the model (stage 5)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of the demo's models, e.g. --set train.dtype=float32")


def _chat_commands(add, group) -> None:
    """Stage 5, fine-tuning: sft."""
    p = add("sft", cmd_sft, "fine-tune a model on conversations (loss on the assistant's turns)")
    p.add_argument("--init", default=None, metavar="SRC",
                   help="the model to start from: a run folder, an export, a transformers GPT-2 folder "
                        "(or a hub name such as gpt2 where the hub is reachable); not needed to --resume")
    p.add_argument("--data", default="chitchat",
                   help="chitchat | jsonl:PATH_OR_GLOB | parquet:GLOB | hf:OWNER/NAME[:CONFIG], rows of "
                        "{\"messages\": [{\"role\", \"content\"}, ...]} (default: chitchat, built in)")
    p.add_argument("--out", required=True, help="run folder of the fine-tuned model")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a train.* key (or model.dropout), e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--val-conversations", type=int, default=None, metavar="N",
                   help="source conversations held out for the validation loss (default: 200)")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: 300)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this many minutes")


def _sampling_arguments(p) -> None:
    """--temperature, --top-k, --top-p: how `generate` and `chat` pick each token."""
    p.add_argument("--temperature", type=float, default=0.8,
                   help="divides the logits; 0 means greedy, higher is more random (default: 0.8)")
    p.add_argument("--top-k", type=int, default=50,
                   help="sample among the k likeliest tokens; 0 turns it off (default: 50)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="sample among the likeliest tokens whose probability reaches p (default: 1, off)")


def _talk_commands(add, group) -> None:
    """Stage 5, talking to a run: chat in the terminal, serve the OpenAI API and a page."""
    p = add("chat", cmd_chat, "talk with a run in the terminal (replies stream as they are generated)")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--system", default=None, help="a system message opening the conversation")
    _sampling_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="tokens a reply has at most (default: 256)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the first reply; each turn adds one (default: 0)")

    p = add("serve", cmd_serve, "serve a run: the OpenAI API under /v1 and a chat page at /")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--slots", type=int, default=8, help="requests generated at once; more wait (default: 8)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `scratchllm` console script."""
    args = build_parser().parse_args(argv)
    args.quiet = getattr(args, "quiet", False)
    args.debug = getattr(args, "debug", False)
    setup_logging(quiet=args.quiet, debug=args.debug)
    try:
        return args.func(args) or 0
    except UserError as e:
        if args.debug:
            raise
        print(f"scratchllm: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only folder, a file where a folder should be
        if args.debug:
            raise
        print(f"scratchllm: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("scratchllm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
