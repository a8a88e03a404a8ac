"""host.alongside: work in a thread while the block runs, waited for at the block's end."""

from __future__ import annotations

import threading

import pytest

from host.alongside import alongside


def test_the_work_runs_while_the_block_does_and_is_done_at_its_end() -> None:
    started, go_on, done = threading.Event(), threading.Event(), []

    def work() -> None:
        started.set()
        assert go_on.wait(10)  # the block lets it finish: it runs beside the block
        done.append(1)

    with alongside(work, "test-work"):
        assert started.wait(10)
        assert done == []
        go_on.set()
    assert done == [1]


def test_what_the_work_raises_is_raised_at_the_blocks_end() -> None:
    def work() -> None:
        raise OSError(28, "No space left on device")

    ran = []
    with pytest.raises(OSError, match="No space left"), alongside(work, "test-work"):
        ran.append(1)
    assert ran == [1]


def test_the_blocks_own_error_wins_and_waits_for_the_work() -> None:
    go_on, done = threading.Event(), []

    def work() -> None:
        go_on.wait(10)
        done.append(1)
        raise OSError("the work's error")

    with pytest.raises(ValueError, match="the block's"), alongside(work, "test-work"):
        go_on.set()
        raise ValueError("the block's error")
    assert done == [1]  # joined before the error left the block
