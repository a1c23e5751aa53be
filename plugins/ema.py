"""Lookahead-EMA (airbench): every ``every`` steps the average moves toward the net with decay
base**every * (t / T)**power and is copied back into the net; after the last step the net
becomes the average, and evaluation uses the averaged weights. All tensors move in one batch
of foreach operations (two per dtype); the decays are precomputed host floats."""

from __future__ import annotations

import torch
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import StepAction, trick

NAME = "ema"


class EmaSettings(Settings):
    every: int = Field(5, ge=1, description="steps between updates")
    base: float = Field(0.95, ge=0, le=1, description="per-step decay base; an update decays by base**every * (t/T)**power")
    power: float = Field(3.0, ge=0, le=100, description="warm-up exponent of (t/T): early updates follow the net closely")
    start_epoch: float = Field(0.0, ge=0, description="first epoch with updates (the seed's v0.7 starts at 2)")


def decay_table(total_steps: int, every: int, base: float, power: float, device=None) -> torch.Tensor:
    """decay[t] = base**every * (t / T)**power for t = 0..T."""
    t = torch.arange(total_steps + 1, dtype=torch.float64, device=device)
    return (base**every * (t / max(total_steps, 1)) ** power).float()


class Lookahead:
    """The average of a fixed list of tensors (parameters and float buffers). Tensors are
    grouped by dtype once (half weights beside fp32 batchnorm), so an update is two foreach
    kernels per dtype: a lerp of the average toward the net and a copy back."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.net = tensors
        self.avg = [t.detach().clone() for t in tensors]
        by_dtype: dict[torch.dtype, tuple[list, list]] = {}
        for n, a in zip(self.net, self.avg):
            nets, avgs = by_dtype.setdefault(n.dtype, ([], []))
            nets.append(n)
            avgs.append(a)
        self.groups = list(by_dtype.values())

    @torch.no_grad()
    def update(self, decay: float | torch.Tensor) -> None:
        """avg <- decay * avg + (1 - decay) * net; net <- avg. ``decay`` is a host float (the
        trainer's table) or a 0-d tensor; a float costs no kernel and no sync."""
        weight = 1 - decay
        for nets, avgs in self.groups:
            if isinstance(weight, torch.Tensor):
                torch._foreach_lerp_(avgs, nets, weight.to(avgs[0].dtype))
            else:
                torch._foreach_lerp_(avgs, nets, weight)
            torch._foreach_copy_(nets, avgs)

    @torch.no_grad()
    def finish(self) -> None:
        for nets, avgs in self.groups:
            torch._foreach_copy_(nets, avgs)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange net and average (used around a mid-run evaluation)."""
        for nets, avgs in self.groups:
            tmp = torch._foreach_add(nets, 0)
            torch._foreach_copy_(nets, avgs)
            torch._foreach_copy_(avgs, tmp)


def tracked_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every floating parameter and buffer (batchnorm running stats included)."""
    out = [p for p in model.parameters() if p.is_floating_point()]
    out += [b for b in model.buffers() if b.is_floating_point()]
    return out


hlb_trick_info, hlb_config_model = trick(NAME, "lookahead-EMA: average pulled toward the net every k steps and copied back", EmaSettings)


@hookimpl
def hlb_step_actions(model, cfg, ctx):
    s = getattr(cfg, NAME)
    state = Lookahead(tracked_tensors(model))
    ctx.state[NAME] = state
    decays = decay_table(ctx.total_steps, s.every, s.base, s.power).tolist()  # host floats: no kernel per update
    start = int(s.start_epoch * ctx.steps_per_epoch)
    if start > 0:
        # the average starts where the net is when updates begin
        restart = StepAction(NAME + "_start", lambda step: torch._foreach_copy_(state.avg, state.net), where="after_step", start_step=start, stop_step=start + 1)
    else:
        restart = None

    def update(step: int) -> None:
        state.update(decays[step])

    return [a for a in [restart] if a] + [
        StepAction(NAME, update, where="after_step", every=s.every, start_step=start + 1),
        StepAction(NAME + "_final", lambda step: state.finish(), where="at_end"),
    ]


@hookimpl(wrapper=True)
def hlb_evaluate(ctx):
    state = ctx.state.get(NAME)
    if state is None or ctx.state.get(NAME + "_finished"):
        return (yield)
    state.swap()
    try:
        return (yield)
    finally:
        state.swap()


@hookimpl
def hlb_train_end(ctx):
    ctx.state[NAME + "_finished"] = True
