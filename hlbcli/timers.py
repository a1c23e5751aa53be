"""What times a run's phases (:func:`hlbcli.run.fit`): the wall clock, synchronizing the device
at each reading (the default), or CUDA events (``hlb bench --timer cuda-events``). Each is read
as ``t0 = timer.start()`` then ``timer.seconds(t0)``; what lies inside the timed region is
:data:`hlbcli.claims.TIMED`."""

from __future__ import annotations

import time
from typing import Any

import torch


class Timer:
    """Wall time of the timed phases, synchronising the device when it reads the clock:
    ``t0 = timer.start()``, then ``timer.seconds(t0)``."""

    name = "wall"

    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self) -> Any:
        return self.now()

    def seconds(self, t0: Any) -> float:
        return self.now() - t0


class CudaEventTimer(Timer):
    """The GPU's own time of the timed phases (``hlb bench --timer cuda-events``): an event
    recorded on the current stream at the start and at the end, the end waited for."""

    name = "cuda-events"

    def start(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def seconds(self, t0: Any) -> float:
        end = torch.cuda.Event(enable_timing=True)
        end.record(torch.cuda.current_stream(self.device))
        end.synchronize()
        return t0.elapsed_time(end) / 1000  # milliseconds


#: the timers ``hlb bench --timer`` chooses from
TIMERS = {"wall": Timer, "cuda-events": CudaEventTimer}


def check_timer(timer: str, device: str) -> None:
    """``hlb bench --timer``: one of :data:`TIMERS`; CUDA events only where the runs train on
    CUDA (``device`` as ``--device`` gives it)."""
    from hlbcli.errors import UsageError
    from hlbcli.session import resolve_device

    if timer not in TIMERS:
        raise UsageError(f"--timer {timer!r} is not a timer", f"use --timer {' or --timer '.join(TIMERS)}")
    if timer == "cuda-events" and resolve_device(device).type != "cuda":
        raise UsageError("--timer cuda-events needs a CUDA GPU, and this bench trains on the CPU",
                         "use --timer wall (the default) on the CPU, or --device cuda on a machine with a GPU")
