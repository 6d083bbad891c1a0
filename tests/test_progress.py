"""Progress lines of long work (fmix/progress.py): at most one per interval, with step, values, elapsed and budget."""

import logging

import pytest

from fmix.progress import LEVEL_ENV, LOGGER, Heartbeat, configure_logging


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_says_step_values_elapsed_remaining_and_budget():
    clock = FakeClock()
    beat = Heartbeat("attack reconstruction", total=700, budget_s=300.0, clock=clock)
    clock.now += 75.0
    assert beat.line(175, l1=0.123456) == (
        "attack reconstruction: step 175/700, l1 0.1235, elapsed 0:01:15, remaining ~0:03:45, budget left 0:03:45"
    )
    assert Heartbeat("align", clock=clock).line(3) == "align: step 3, elapsed 0:00:00"


def test_lines_come_at_most_every_interval(caplog):
    clock = FakeClock()
    beat = Heartbeat("train mixup4", total=10, every=30.0, clock=clock)
    logged = []
    with caplog.at_level(logging.INFO, logger="fmix"):
        for step in range(1, 11):
            logged.append(beat(step, loss=1.0 / step))
            clock.now += 12.0  # a step every 12 s: a line every third step
    assert logged == [True, False, False, True, False, False, True, False, False, True]
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 4 and lines[0].startswith("train mixup4: step 1/10, loss 1, elapsed 0:00:00")
    assert {record.name for record in caplog.records} == {"fmix.train"}


def test_bad_settings_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="Expected every > 0, got 0"):
        Heartbeat("x", every=0)
    monkeypatch.setenv(LEVEL_ENV, "LOUD")
    with pytest.raises(ValueError, match=r"FMIX_LOG_LEVEL='LOUD' is not a logging level"):
        configure_logging()


def test_verbose_sets_info_for_this_process_and_its_children(monkeypatch):
    monkeypatch.delenv(LEVEL_ENV, raising=False)
    monkeypatch.setattr(LOGGER, "handlers", [])
    monkeypatch.setattr(LOGGER, "propagate", True)
    configure_logging()
    assert LOGGER.level == logging.WARNING and len(LOGGER.handlers) == 1
    configure_logging(verbose=True)
    import os

    assert LOGGER.level == logging.INFO and os.environ[LEVEL_ENV] == "INFO" and len(LOGGER.handlers) == 1
    LOGGER.setLevel(logging.NOTSET)
