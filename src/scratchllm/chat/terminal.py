"""`scratchllm chat`: a conversation with a run in the terminal, the reply printed as it is generated.

The session keeps its KV cache between turns (engine.py), so a turn costs the tokens of the new
message only. Lines starting with "/" are commands: /reset starts a new conversation, /quit (or
Ctrl-D) ends; Ctrl-C stops a reply mid-way and keeps what it wrote.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TextIO

from scratchllm.chat.engine import ContextError, Engine, Sampling
from scratchllm.util.errors import UserError

# A model can write any character; control characters (escape sequences above all) would drive the
# terminal instead of showing, so all but newline and tab print as U+FFFD.
SHOWN = {c: "\ufffd" for c in [*range(32), *range(127, 160)] if chr(c) not in "\n\t"}
HELP = "/reset starts over, /quit or Ctrl-D ends, Ctrl-C stops a reply"
USER_PROMPT, MODEL_PROMPT = "you> ", "model> "


def _read(prompt: str, stdin: TextIO, stdout: TextIO) -> str | None:
    """One line typed by the user (None at the end of input)."""
    if stdin is sys.stdin and stdin.isatty():
        try:
            import readline  # noqa: F401  # line editing and history for input()
        except ImportError:
            pass
        try:
            return input(prompt)
        except EOFError:
            return None
    stdout.write(prompt)
    stdout.flush()
    line = stdin.readline()
    return line.rstrip("\n") if line else None


def _reply(session, text: str, params: Sampling, stdout: TextIO) -> None:
    """Stream the reply to text; Ctrl-C stops it and keeps what it wrote."""
    stdout.write(MODEL_PROMPT)
    stdout.flush()
    stream = session.ask(text, params)
    try:
        for piece in stream:
            stdout.write(piece.translate(SHOWN))
            stdout.flush()
    except KeyboardInterrupt:
        stdout.write(" [stopped]")
    if stream.finish_reason == "length":
        stdout.write(" [length limit]")
    stdout.write("\n")
    stdout.flush()


def chat(engine: Engine, params: Sampling, system: str | None = None, stdin: TextIO = sys.stdin,
         stdout: TextIO = sys.stdout) -> None:
    """Talk with `engine` until /quit or the end of input; each turn's seed is params.seed + its number."""
    params.check()
    session = engine.session(system)
    if engine.note:
        stdout.write(f"note: {engine.note}\n")
    stdout.write(f"context {engine.block_size:,} tokens; {HELP}\n")
    turn = 0
    while (line := _read(USER_PROMPT, stdin, stdout)) is not None:
        command = line.strip()
        if command == "/quit":
            return
        if command == "/reset":
            session.reset()
            stdout.write("(a new conversation)\n")
            continue
        if command.startswith("/"):
            stdout.write(f"unknown command {command}: {HELP}\n")
            continue
        if not command:
            continue
        seed = None if params.seed is None else params.seed + turn
        try:
            _reply(session, line, dataclasses.replace(params, seed=seed), stdout)
        except ContextError as e:
            stdout.write(f"\n{e}\n")
        turn += 1
    stdout.write("\n")


def run_chat(run: str, params: Sampling, system: str | None = None) -> None:
    """`scratchllm chat`: load the run, then talk."""
    from scratchllm.runtime.distributed import pick_device

    try:
        params.check()
    except ValueError as e:
        raise UserError(str(e)) from None
    if hasattr(sys.stdout, "reconfigure"):  # a terminal that cannot show a character gets U+FFFD
        sys.stdout.reconfigure(errors="replace")
    chat(Engine.from_run(run, pick_device("auto")), params, system)
