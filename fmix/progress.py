"""Progress lines for long work: the stdlib logger ``fmix``, one line at most every ``every`` seconds.

``fmix -v COMMAND`` (or ``FMIX_LOG_LEVEL=INFO``, which child processes such as torchrun's ranks
inherit) shows them on stderr; the pipeline's stages run with ``-v`` and send stderr to their
``logs/`` file, so a stage that runs for minutes leaves a line at least every 30 s: the step, the
loss, the time elapsed and what remains of its budget.
"""

from __future__ import annotations

import logging
import os
import sys
import time

LOGGER = logging.getLogger("fmix")
LEVEL_ENV = "FMIX_LOG_LEVEL"
# Seconds between two progress lines of one job.
EVERY = 30.0


def configure_logging(verbose: bool = False) -> None:
    """Send the ``fmix`` logger to stderr: INFO with ``verbose`` (and in child processes, through
    :data:`LEVEL_ENV`), else the level of :data:`LEVEL_ENV` (default WARNING)."""
    if verbose:
        os.environ[LEVEL_ENV] = "INFO"
    level = os.environ.get(LEVEL_ENV, "WARNING").upper()
    if level not in logging.getLevelNamesMapping():
        raise ValueError(f"{LEVEL_ENV}={level!r} is not a logging level (DEBUG, INFO, WARNING, ERROR)")
    LOGGER.setLevel(level)
    if not any(getattr(handler, "fmix", False) for handler in LOGGER.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.fmix = True
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        LOGGER.addHandler(handler)
    LOGGER.propagate = False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Heartbeat:
    """Logs ``job``'s progress at INFO, at most once every ``every`` seconds (and at the first step).

    Args:
        job: what runs, e.g. ``"train mixup4"`` (the logger is ``fmix.<first word>``).
        total: steps of the whole job, if known (the line then says what remains, and an estimate).
        budget_s: the job's time budget in seconds, if it has one (the line says what remains of it).
        every: seconds between two lines.
        clock: the clock (tests pass a fake one).

    Example:
        >>> beat = Heartbeat("attack", total=700)
        >>> beat(0, loss=0.31)  # logged: the first step
        True
    """

    def __init__(
        self,
        job: str,
        total: int | None = None,
        budget_s: float | None = None,
        every: float = EVERY,
        clock=time.monotonic,
    ) -> None:
        if every <= 0:
            raise ValueError(f"Expected every > 0, got {every}")
        self.job, self.total, self.budget_s, self.every, self.clock = job, total, budget_s, every, clock
        self.logger = LOGGER.getChild(job.split()[0])
        self.start = clock()
        self.last: float | None = None

    def line(self, step: int, **values: float) -> str:
        """The progress line of ``step`` (1-based count of steps done) with ``values`` (e.g. ``loss``)."""
        elapsed = self.clock() - self.start
        parts = [f"{self.job}: step {step}" + (f"/{self.total}" if self.total else "")]
        parts += [f"{key} {value:.4g}" for key, value in values.items() if value is not None]
        parts.append(f"elapsed {_duration(elapsed)}")
        if self.total and step > 0:
            parts.append(f"remaining ~{_duration(elapsed / step * (self.total - step))}")
        if self.budget_s is not None:
            parts.append(f"budget left {_duration(max(0.0, self.budget_s - elapsed))}")
        return ", ".join(parts)

    def __call__(self, step: int, **values: float) -> bool:
        """Log the line of ``step`` if ``every`` seconds passed since the last one (or none was logged).

        Returns:
            Whether a line was logged (or would have been, below the logger's level).
        """
        now = self.clock()
        if self.last is not None and now - self.last < self.every:
            return False
        self.last = now
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info(self.line(step, **values))
        return True
