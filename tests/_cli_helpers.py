"""What every command promises for a mistake the user can fix: one line on stderr, exit status 2."""


def one_line_error(r, *words):
    """Assert that command `r` failed with exit 2 and one `scratchllm: error:` line holding `words`."""
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scratchllm: error:"), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]
