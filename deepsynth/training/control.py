"""Graceful stop: the driver asks, the training workers stop at the next step boundary.

A SIGTERM or SIGINT reaches the job's driver process, not the Ray Train workers. The driver
sets a flag on a small named actor (`StopSignal`), and the loop polls it once per step; the
workers agree on the answer with an all-reduce, finish the step in flight, save a checkpoint
and return, so a stop loses no finished step. A request can also name a step to stop after,
which makes the stop exact (the tests resume from one).

    signal = StopSignal.options(name=stop_signal_name(run), get_if_exists=True).remote()   # driver
    signal.request.remote()              # at the next step boundary; request.remote(after_step=10): after step 10
    requested = StopPoller(run).requested(step)                                             # worker, per step
"""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
class StopSignal:
    def __init__(self) -> None:
        self._requested = False
        self._after_step: int | None = None

    def request(self, after_step: int | None = None) -> None:
        self._requested, self._after_step = True, after_step

    def requested(self, step: int | None = None) -> bool:
        """Whether to stop after `step`; without a step, whether a stop was asked for at all."""
        if step is None or self._after_step is None:
            return self._requested
        return self._requested and step >= self._after_step


def stop_signal_name(run_name: str) -> str:
    return f"deepsynth-stop/{run_name}"


class StopPoller:
    """The worker side: asks the run's StopSignal actor, if the driver created one."""

    def __init__(self, run_name: str):
        try:
            self.actor = ray.get_actor(stop_signal_name(run_name))
        except ValueError:  # started without a driver that listens for signals (e.g. under Ray Tune)
            self.actor = None

    def requested(self, step: int) -> bool:
        return self.actor is not None and ray.get(self.actor.requested.remote(step))
