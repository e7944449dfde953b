"""Stopping a run cleanly: Ctrl-C (SIGINT) or a scheduler's SIGTERM ends the training after the step in
progress, with a checkpoint and a line saying how to resume, and exits 130 / 143 (128 + the signal).

    stop = interrupt.StopRequest().install()   # the handlers only while the loop runs: import changes nothing
    for step in ...:
        ...                                     # the step runs to its end, undisturbed
        if stop.signum: ...                     # train.py reduces this over the ranks, saves and exits
    stop.restore()

The handler only sets a flag; the training loop reads it between steps, at a fixed point where every
rank takes part in one all-reduce of it (train.py), so all ranks stop after the same step and no
collective is left half-matched. The same signal a second time quits at once, without saving (the
previous checkpoint stays intact: saves are atomic). A different second signal is noted and ignored:
under torchrun a Ctrl-C reaches every worker from the terminal and torchrun then sends SIGTERM too.
"""

import signal
import sys
import time

NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}


class StopRequest:
    """Set by SIGINT / SIGTERM, read between steps. signum: the first signal received (0: none)."""

    def __init__(self):
        self.signum, self.previous = 0, {}

    def handle(self, signum, frame):
        if self.signum == signum:  # the same signal twice: the user does not want to wait
            print(f"\n{NAMES[signum]} again: quitting now, without saving; the last checkpoint is intact",
                  file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)
        if self.signum:
            return  # a different second signal (torchrun's SIGTERM after the terminal's SIGINT)
        self.signum = signum
        print(f"\n{NAMES[signum]}: stopping after this step, with a checkpoint "
              f"({NAMES[signum].split()[0]} again quits at once, without saving)", file=sys.stderr, flush=True)

    def install(self) -> "StopRequest":
        """From now on SIGINT and SIGTERM call handle()."""
        self.previous = {s: signal.signal(s, self.handle) for s in NAMES}
        return self

    def restore(self):
        """The handlers from before install() (Python's own: Ctrl-C raises KeyboardInterrupt)."""
        for s, h in self.previous.items():
            signal.signal(s, h)


class SaveClock:
    """A checkpoint every `minutes` of training (0 = never by time): a crash or a kill then loses at
    most that much work, whatever a step costs (seconds on CPU, many minutes with the paper's recipe)."""

    def __init__(self, minutes: float):
        self.seconds, self.last = minutes * 60, time.monotonic()

    def due(self) -> bool:
        return self.seconds > 0 and time.monotonic() - self.last >= self.seconds

    def saved(self):
        self.last = time.monotonic()
