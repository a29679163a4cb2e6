"""Stop a run cleanly on SIGINT/SIGTERM: finish the current step, then leave with one line and 130/143.

:class:`StopOnSignal` replaces the two handlers while a run trains; a signal only sets a flag, which the
training loop reads after every step (:meth:`StopOnSignal.check`). A second signal of the same kind gets
the previous handler back, so an impatient second Ctrl-C still stops at once.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run was asked to stop by a signal; ``exit_code`` is the shell convention 128 + signal number."""

    def __init__(self, signum: int, where: str) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name} {where}; resume with --resume")


class StopOnSignal:
    """Context manager that turns SIGINT/SIGTERM into a request to stop at the next :meth:`check`.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        signal.signal(signum, self._previous[signum])  # a second signal acts as it would have before

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self, where: str) -> None:
        """Raise :class:`Interrupted` if a signal arrived; ``where`` ends its message ("after step 3 of epoch 2")."""
        if self.signum is not None:
            raise Interrupted(self.signum, where)
