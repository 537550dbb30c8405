"""`scratchllm chat` as a person uses it, in a terminal (tmux): type, read the streamed reply, /reset,
/quit, Ctrl-D; the replies are the engine's own."""

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _chat_helpers import byte_ids, chat_tokenizer, random_gpt, save_run, scripted_gpt

from scratchllm.chat.engine import Engine, Sampling
from scratchllm.chat.terminal import SHOWN
from scratchllm.tokenizer.chat import ASSISTANT_END

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]
GREEDY = Sampling(temperature=0, max_new_tokens=60)
SAID = "Hi, the café is open ✓ and the tea is hot. "


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A chat run that writes SAID over and over, ending a turn every 40 positions; a base run."""
    folder = tmp_path_factory.mktemp("chat")
    tok, base = chat_tokenizer(), chat_tokenizer(chat=False)
    text = byte_ids(tok, SAID * 8)
    script = [tok.special_tokens[ASSISTANT_END] if i % 40 == 39 else t for i, t in enumerate(text)]
    return (save_run(folder / "chatrun", scripted_gpt(tok.vocab_size, script, block_size=256), tok),
            save_run(folder / "baserun", random_gpt(base.vocab_size), base))


class Terminal:
    """A tmux session of its own (on a socket of its own) running one command."""

    def __init__(self, command: str):
        self.socket = f"scratchllm-test-{os.getpid()}-{time.monotonic_ns()}"
        env = f"PYTHONPATH={shlex.quote(str(ROOT / 'src'))} HF_HUB_OFFLINE=1"
        shell = f"env {env} {command}; echo \"exit status $?\"; sleep 60"
        self.tmux("new-session", "-d", "-x", "200", "-y", "60", shell)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J")

    def type(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def wait_for(self, check, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if check(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"the terminal never got there; it shows:\n{self.screen()}")

    def say(self, text: str) -> str:
        """Type a line and return the reply printed for it."""
        prompts = self.screen().count("you> ")
        self.type("-l", text)
        self.type("Enter")
        screen = self.wait_for(lambda s: s.count("you> ") > prompts)
        lines = screen.splitlines()
        asked = max(i for i, line in enumerate(lines) if line.startswith("you> " + text))
        return lines[asked + 1].removeprefix("model> ")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def chat_command(run: Path, *flags: str) -> str:
    return " ".join(shlex.quote(a) for a in (sys.executable, "-m", "scratchllm", "chat", "--run", str(run),
                                               "--temperature", "0", "--max-new-tokens", "60", *flags))


def test_a_conversation_in_the_terminal(runs):
    engine = Engine.from_run(runs[0])
    session = engine.session()
    expect = [session.ask(text, GREEDY).run() for text in ("Hello there", "How are you?")]
    assert all(expect) and expect[0] != expect[1]
    term = Terminal(chat_command(runs[0]))
    try:
        term.wait_for(lambda s: "you> " in s)
        assert "/reset" in term.screen() and "note:" not in term.screen()
        assert term.say("Hello there") == expect[0]
        assert term.say("How are you?") == expect[1]  # the second turn follows the first
        prompts = term.screen().count("you> ")
        term.type("/reset", "Enter")
        term.wait_for(lambda s: "(a new conversation)" in s and s.count("you> ") > prompts)
        assert term.say("Hello there") == expect[0]  # as at the start
        term.type("/quit", "Enter")
        term.wait_for(lambda s: "exit status 0" in s)
    finally:
        term.close()


def test_a_base_run_says_so_once_and_ctrl_d_ends_it(runs):
    engine = Engine.from_run(runs[1])
    stream = engine.session().ask("Once upon", GREEDY)
    # Control characters show as U+FFFD; this reply runs to the length limit, which is said.
    shown = stream.run().translate(SHOWN) + " [length limit]"
    assert stream.finish_reason == "length" and "\n" not in shown
    term = Terminal(chat_command(runs[1]))
    try:
        screen = term.wait_for(lambda s: "you> " in s)
        assert screen.count("plain completion") == 1
        assert term.say("Once upon") == shown
        term.type("C-d")
        term.wait_for(lambda s: "exit status 0" in s)
        assert term.screen().count("plain completion") == 1
    finally:
        term.close()


def test_mistakes_on_the_command_line_are_one_line_and_status_2(runs, capsys):
    import socket

    from scratchllm.cli import main

    assert main(["chat", "--run", str(runs[0]), "--temperature", "-1"]) == 2
    assert main(["serve", "--run", str(runs[0].parent / "missing")]) == 2
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", "--run", str(runs[0]), "--port", str(busy.getsockname()[1])]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(line.startswith("scratchllm: error: ") for line in lines)
    assert "temperature" in lines[0] and "not a run folder" in lines[1] and "cannot listen" in lines[2]


def test_unknown_commands_and_overlong_messages_are_answered_and_the_chat_goes_on(runs):
    import io

    from scratchllm.chat.terminal import chat

    engine = Engine.from_run(runs[0])
    expect = engine.session().ask("Hello there", GREEDY).run()
    out = io.StringIO()
    chat(engine, GREEDY, stdin=io.StringIO("/help\n" + "hello " * 300 + "\nHello there\n/quit\nnever read\n"),
         stdout=out)
    text = out.getvalue()
    assert "unknown command /help" in text and "send a shorter one" in text
    assert f"model> {expect}\n" in text and "never read" not in text
