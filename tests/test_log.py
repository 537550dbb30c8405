"""The library's logger: module loggers quiet on ranks but the first, and the command line's handler that
sends reports to stdout, progress and warnings to stderr, and hides progress under --quiet."""

import logging

import pytest

from scratchllm.util.log import ALL_RANKS, REPORT, get_logger, setup_logging


def _say_everything(logger):
    logger.debug("a debug line")
    logger.info("a progress line")
    logger.info("a report line", extra=REPORT)
    logger.warning("a warning line")
    logger.error("an error line")


@pytest.mark.parametrize("quiet, debug, out, err", [
    (False, False, ["a report line"], ["a progress line", "a warning line", "an error line"]),
    (True, False, ["a report line"], ["a warning line", "an error line"]),
    (False, True, ["a report line"], ["a debug line", "a progress line", "a warning line", "an error line"]),
])
def test_the_command_line_sends_reports_to_stdout_and_the_rest_to_stderr(capsys, quiet, debug, out, err):
    setup_logging(quiet=quiet, debug=debug)
    setup_logging(quiet=quiet, debug=debug)  # set up twice (main() called twice in one process): one handler
    _say_everything(get_logger("scratchllm.data.download"))
    got = capsys.readouterr()
    assert got.out.splitlines() == out and got.err.splitlines() == err


def test_other_ranks_stay_quiet_unless_a_record_asks(monkeypatch, caplog):
    logger = get_logger("scratchllm.train.trainer")
    monkeypatch.setenv("RANK", "1")
    logger.warning("rank 1 alone")
    logger.warning("every rank", extra=ALL_RANKS)
    monkeypatch.setenv("RANK", "0")
    logger.warning("rank 0")
    assert [r.getMessage() for r in caplog.records] == ["every rank", "rank 0"]


def test_a_library_user_routes_the_records_as_any_library_s(tmp_path):
    """A handler on "scratchllm" (here a file) receives every module's records; nothing set up by us."""
    file = tmp_path / "log.txt"
    handler = logging.FileHandler(file)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger("scratchllm")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        _say_everything(get_logger("scratchllm.run.checkpoint"))
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(logging.NOTSET)
    assert file.read_text().splitlines() == [
        "scratchllm.run.checkpoint INFO a progress line", "scratchllm.run.checkpoint INFO a report line",
        "scratchllm.run.checkpoint WARNING a warning line", "scratchllm.run.checkpoint ERROR an error line"]
