"""The command line as a whole: fast help, one-line errors for OS failures."""

import subprocess
import sys


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
