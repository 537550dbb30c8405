"""The command line as a whole: fast help, one-line errors for OS failures."""

import subprocess
import sys

import pytest


def test_help_imports_no_heavy_library(cli_env):
    # `scratchllm --help` must answer at once: torch, datasets and transformers load inside commands.
    code = ("import sys, contextlib, io\n"
            "from scratchllm.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: main(['--help'])\n"
            "    except SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'datasets', 'transformers', 'tiktoken') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_os_error_is_one_line_exit_2(run_cli, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    doc = tmp_path / "doc.txt"
    doc.write_text("hello world")
    r = run_cli("tokenize", "--source", f"text:{doc}", "--tokenizer", "gpt2", "--out", blocker / "out",
                "--quiet")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("scratchllm: error: ")
    assert "Traceback" not in r.stderr
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("argv, words", [
    (["train", "--data", "d", "--out", "o", "--bogus"], "unrecognized arguments: --bogus"),
    (["trian"], "invalid choice: 'trian'"),
    (["train"], "the following arguments are required: --data, --out (see scratchllm train --help)"),
    (["generate", "--run", "r", "--prompt", "p", "--max-new-tokens", "ten"], "invalid int value: 'ten'"),
    (["export", "--run", "r", "--out", "o", "--format", "onnx"], "argument --format: invalid choice"),
    ([], "the following arguments are required: COMMAND"),
])
def test_a_usage_mistake_is_one_line_and_exit_2(capsys, argv, words):
    from scratchllm.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert err.count("\n") == 1 and err.startswith("scratchllm: error: ") and words in err, err


def test_help_is_argparse_s_own(capsys):
    from scratchllm.cli import main

    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert out.startswith("usage: scratchllm train [-h] [--quiet] [--debug] --data DATA --out OUT")
    assert "--resume" in out and "continue from the newest valid checkpoint" in out
