"""The `scratchllm` command: parses arguments, calls the library, turns user errors into one line.

Heavy libraries (torch, datasets, transformers) are imported inside the command functions so that
`scratchllm --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys

from scratchllm.util import UserError


def _not_built(name: str):
    raise UserError(f"`scratchllm {name}` is not built yet")


# --- stage 1: data -------------------------------------------------------------------------


def cmd_estimate(args) -> int:
    _not_built("estimate")


def cmd_download(args) -> int:
    _not_built("download")


def cmd_tokenizer_train(args) -> int:
    _not_built("tokenizer train")


def cmd_tokenize(args) -> int:
    _not_built("tokenize")


# --- stages 3 and 4: model, training ---------------------------------------------------------


def cmd_model_info(args) -> int:
    _not_built("model info")


def cmd_train(args) -> int:
    _not_built("train")


def cmd_eval(args) -> int:
    _not_built("eval")


def cmd_generate(args) -> int:
    _not_built("generate")


def cmd_export(args) -> int:
    _not_built("export")


def cmd_demo(args) -> int:
    _not_built("demo")


# --- the parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full command-line interface (flags as in DESIGN.md)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars, only results and errors")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")

    parser = argparse.ArgumentParser(
        prog="scratchllm",
        description="Build a GPT-style language model from scratch: data, tokenizer, model, training.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, func, help, parent=sub):
        p = parent.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=func)
        return p

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

    tok = sub.add_parser("tokenizer", help="learn or inspect a BPE tokenizer", parents=[common])
    tok_sub = tok.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    p = add("train", cmd_tokenizer_train, "learn a byte-level BPE tokenizer", parent=tok_sub)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--source", default=None, help="source spec (default: shakespeare)")
    src.add_argument("--data", default=None, help="a `download` output folder")
    p.add_argument("--vocab-size", type=int, required=True, help="bytes + merges + special tokens")
    p.add_argument("--out", required=True, help="folder for tokenizer.json")
    p.add_argument("--pattern", choices=["gpt4", "gpt2"], default="gpt4",
                   help="pre-tokenization split pattern (default: gpt4)")
    p.add_argument("--max-bytes", default=None, help="learn from at most this much text")

    p = add("tokenize", cmd_tokenize, "encode documents into train.bin and val.bin")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--source", default=None, help="source spec (default: shakespeare)")
    src.add_argument("--data", default=None, help="a `download` output folder")
    p.add_argument("--tokenizer", required=True,
                   help="a tokenizer folder, or a pretrained name: gpt2, cl100k_base, o200k_base")
    p.add_argument("--out", required=True, help="folder for train.bin, val.bin, meta.json")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--val-docs", type=int, default=None, help="last N documents go to val.bin")
    split.add_argument("--val-fraction", type=float, default=None,
                       help="this fraction of documents (from the end) goes to val.bin")
    p.add_argument("--workers", type=int, default=None, help="encoding processes (default: cores)")

    model = sub.add_parser("model", help="inspect model presets", parents=[common])
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    p = add("info", cmd_model_info, "summary, parameters and FLOPs of a preset", parent=model_sub)
    p.add_argument("--preset", required=True, help="tiny | seed | gpt2-124m | gpt2-350m | modern-124m")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model field, e.g. --set model.n_layer=2")

    p = add("train", cmd_train, "train a GPT on token files")
    p.add_argument("--data", required=True, help="folder with train.bin, val.bin, meta.json")
    p.add_argument("--out", required=True, help="run folder (runs/NAME)")
    p.add_argument("--preset", default=None, help="model preset (default: tiny)")
    p.add_argument("--config", default=None, help="a TOML config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this many minutes")

    p = add("eval", cmd_eval, "evaluate a run's model on validation tokens")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--data", default=None, help="token folder (default: the one the run used)")

    p = add("generate", cmd_generate, "generate text from a trained run")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="recompute attention without a KV cache")

    p = add("export", cmd_export, "write a run's model in another format")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--format", choices=["hf"], default="hf", help="hf: a transformers GPT-2 folder")
    p.add_argument("--out", required=True, help="output folder")

    p = add("demo", cmd_demo, "run all four stages on the built-in corpus")
    p.add_argument("--out", default="demo", help="folder for everything the demo makes (default: demo)")
    p.add_argument("--minutes", type=float, default=None, help="training time budget in minutes")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `scratchllm` console script."""
    args = build_parser().parse_args(argv)
    args.quiet = getattr(args, "quiet", False)
    args.debug = getattr(args, "debug", False)
    try:
        return args.func(args) or 0
    except UserError as e:
        if args.debug:
            raise
        print(f"scratchllm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("scratchllm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
