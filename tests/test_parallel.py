"""ordered_map: results in input order, bounded read-ahead, and a dead worker is an error, not a hang."""

import os
import signal

import pytest

from scratchllm.tokenizer.parallel import ordered_map
from scratchllm.util.errors import UserError


def square(x):
    return x * x


def die_on_five(x):
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
    return x


_offset = 0


def set_offset(value):
    global _offset
    _offset = value


def add_offset(x):
    return x + _offset


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_come_in_input_order(workers):
    assert list(ordered_map(square, range(50), workers)) == [x * x for x in range(50)]


@pytest.mark.parametrize("workers", [1, 2])
def test_initializer_runs_in_every_worker(workers):
    assert list(ordered_map(add_offset, range(20), workers, set_offset, (100,))) == list(range(100, 120))


def test_reads_at_most_two_items_per_worker_ahead():
    read = []

    def items():
        for i in range(40):
            read.append(i)
            yield i

    for i, result in enumerate(ordered_map(square, items(), workers=2)):
        assert result == i * i
        assert len(read) <= i + 1 + 2 * 2


def test_a_dead_worker_raises_instead_of_hanging():
    with pytest.raises(UserError, match="worker process died"):
        list(ordered_map(die_on_five, range(20), workers=2))


def fail_to_start():
    raise ValueError("bad set-up")


def test_a_failing_set_up_is_named_as_such():
    with pytest.raises(UserError, match="failed to start; run with --workers 1"):
        list(ordered_map(square, range(5), workers=2, initializer=fail_to_start))
    with pytest.raises(ValueError, match="bad set-up"):  # one process shows the real error
        list(ordered_map(square, range(5), workers=1, initializer=fail_to_start))
