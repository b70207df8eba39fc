"""What the training loop carries from one env step to the next (`Progress`), how a run stops: a signal
(`StopRequested`) or a reason to end early (`RunStopped`), and when its periodic work is due (`crossed`)."""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from rssm.logging import MeanTracker
from rssm.rssm import RSSMState


@dataclass
class Progress:
    """The training loop's own state (the collector and agent keep theirs): its counters, and what it carries
    from one env step to the next, so that a resumed run goes on as the run that was never stopped."""

    updates: int = 0
    env_steps: int = 0  # env steps of all ranks together (of the collector, in a single process)
    updates_due: float = 0.0  # fractional updates owed under the train ratio
    last_return: float = float("nan")
    actions: np.ndarray | None = None  # the next env step's actions (N, A); None: random ones at the start
    actor_state: RSSMState | None = None  # the actor's model state after the latest transitions (batch N)
    tracker: MeanTracker = field(default_factory=MeanTracker)  # metrics since the last log
    eval_pending: bool = False  # a signal abandoned the evaluation due at this step: the resumed run does it

    def state_dict(self) -> dict:
        """Numbers, arrays and CPU tensors (`rssm.checkpoint.to_tensors` makes the arrays tensors)."""
        state = None if self.actor_state is None else {k: v.cpu() for k, v in self.actor_state._asdict().items()}
        return {"updates": self.updates, "env_steps": self.env_steps, "updates_due": self.updates_due,
                "last_return": self.last_return,
                "actions": self.actions, "actor_state": state, "tracker": self.tracker.state_dict(),
                "eval_pending": self.eval_pending}

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device, env_steps: int) -> Progress:
        """Rebuild from `state_dict` as a checkpoint holds it; a checkpoint from before the loop's state was
        saved has the counters only, and one from before the ranks' env steps were counted has the collector's
        `env_steps`."""
        progress = cls(state["updates"], int(state.get("env_steps", env_steps)), state["updates_due"],
                       state["last_return"])
        progress.eval_pending = bool(state.get("eval_pending", False))
        if state.get("actions") is not None:
            progress.actions = np.asarray(state["actions"])
        if state.get("actor_state") is not None:
            progress.actor_state = RSSMState(**{k: v.to(device) for k, v in state["actor_state"].items()})
        progress.tracker.load_state_dict(state.get("tracker", {}), device)
        return progress


class ForcedStop(BaseException):
    """A second signal while the run waited on its envs (`StopRequested.waiting`), which may never return. Not an
    Exception: an env's own `except Exception` must not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopRequested:
    """Turns SIGINT and SIGTERM into a flag the loop and evaluation check between env steps (main thread only).
    Installed for the whole run, checkpoint save included: a second signal during the save, or the updates, is
    noted, never raised inside it. While the run waits on its envs (`waiting`), a second signal raises
    ForcedStop: an env that hangs would otherwise keep the run from ever reaching its next check.

    In a data-parallel job a signal reaches the ranks at different points of their loop, so the loop does not
    read `signum` there: it reads `agreed`, the signal the ranks agreed on after their last env step (the loop
    sets it), and every rank leaves the loop at the same step. In a single process `agreed` is `signum`."""

    def __init__(self, shared: bool = False):
        self.signum, self.shared, self._agreed, self._previous = 0, shared, 0, {}
        self._waiting = False

    @property
    def agreed(self) -> int:
        return self._agreed if self.shared else self.signum

    @agreed.setter
    def agreed(self, signum: int) -> None:
        self._agreed = signum
        self.signum = self.signum or signum

    def __enter__(self) -> StopRequested:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """A stretch spent waiting on the envs: the run's state is whole (the step has not been taken in), so a
        ForcedStop raised here can still be followed by a checkpoint."""
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False

    def _handle(self, signum, frame) -> None:
        if self.signum and self._waiting:
            self._waiting = False
            raise ForcedStop(signum)
        self.signum = self.signum or signum  # the first signal names the stop

    def __call__(self) -> bool:
        return bool(self.signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class RunStopped(Exception):
    """The run stopped early (signal, diverging losses); `status` is the process exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def crossed(before: int, now: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (before, now]: the env step counter moves by up to N per step."""
    return every > 0 and now // every > before // every
