"""What docs/tricks.md says of the contract where a trick author would otherwise have to guess,
each with the example it gives: autograd in a step action, module hooks on a compiled net, the
order of two tricks' hooks, the run's generator in hlb_select, a trick's lr schedule over the
core's (and its overrides in an ablation), a swapped-in trick's settings, a tracker's test."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_sets
from hlbcli import hookimpl, testing
from hlbcli.contract import StepAction, trick
from hlbcli.core_plugin import piecewise_linear
from hlbcli.experiments.plan import AblateOptions, plan_battery
from hlbcli.resolve import resolve
from hlbcli.tracking import Tracker


class Autograd:
    """A step action that runs autograd: it adds the gradient of a penalty to the step's."""

    hlb_trick_info, hlb_config_model = trick("autograd_action", "an L2 penalty added by a backward in a step action")

    def __init__(self):
        self.grad_on = []

    @hookimpl
    def hlb_step_actions(self, model):
        head = model.head.weight

        def penalty(step):
            self.grad_on.append(torch.is_grad_enabled())
            (1e-3 * head.float().pow(2).sum()).backward()  # accumulates into the step's .grad

        return [StepAction("penalty", penalty, where="after_backward")]


def test_a_step_action_may_run_autograd():
    trick_ = Autograd()
    cfg, tm = testing.resolve_config(trick_)
    res = testing.run(testing.session(cfg, tm))
    assert res.status == "completed"
    assert trick_.grad_on and all(trick_.grad_on)  # autograd is on inside the step


class ScaleHead:
    """A module hook registered per run (after the net is compiled): it halves the head's output.
    At the final evaluation it compares the compiled forward with the eager one, hook on and off."""

    hlb_trick_info, hlb_config_model = trick("scale_head", "a forward hook on the head, registered per run")

    def __init__(self):
        self.calls, self.outputs = 0, {}

    @hookimpl
    def hlb_model_init(self, model, ctx):
        def halve(module, args, out):
            self.calls += 1
            return out * 0.5

        ctx.state["scale_head"] = model.head.register_forward_hook(halve)

    @hookimpl(wrapper=True)
    def hlb_eval_forward(self, model, ctx):
        forward = yield  # the compiled model (the core's result, tta off)
        x = ctx.train_images[:32]
        ctx.model.eval()
        with torch.no_grad():
            self.outputs["compiled"] = forward(x).float()
            self.outputs["eager"] = ctx.model(x).float()
            ctx.state["scale_head"].remove()
            self.outputs["eager without the hook"] = ctx.model(x).float()
        ctx.model.train()
        return forward


def test_module_hooks_fire_on_a_compiled_net():
    """A forward hook added to the session's module after it was compiled changes the compiled
    forward as it changes the eager one (torch.compile traces module hooks and compiles again
    when one is added), and its Python runs on every call."""
    trick_ = ScaleHead()
    cfg, tm = testing.resolve_config(trick_, sets=['train.compile="on"', "train.epochs=1", "data.synthetic_train=128"],
                                     disable=["tta"])
    s = testing.session(cfg, tm)
    assert s.compiled
    res = testing.run(s)
    assert res.status == "completed"
    out = trick_.outputs
    assert torch.allclose(out["compiled"], out["eager"], rtol=1e-4, atol=1e-5)
    assert torch.allclose(out["eager"], 0.5 * out["eager without the hook"], rtol=1e-4, atol=1e-5)
    assert trick_.calls >= res.epochs[-1]["steps"]  # at least once per step


def _order_trick(name: str, seen: list):
    class Order:
        hlb_trick_info, hlb_config_model = trick(name, "records the order of its hooks")

        @hookimpl
        def hlb_model_init(self):
            seen.append(("hlb_model_init", name))

        @hookimpl
        def hlb_run_end(self):
            seen.append(("hlb_run_end", name))

    return Order()


def test_two_tricks_hooks_run_last_listed_first():
    """pluggy calls the last registered implementation first; hlb registers the tricks in the
    order of the config's tricks list."""
    seen: list = []
    cfg, tm = testing.resolve_config(_order_trick("first", seen), _order_trick("second", seen))
    assert cfg.tricks[-2:] == ["first", "second"]
    testing.run_record(testing.session(cfg, tm))
    assert seen == [("hlb_model_init", "second"), ("hlb_model_init", "first"),
                    ("hlb_run_end", "second"), ("hlb_run_end", "first")]


class DrawsInSelect:
    """Draws from the run's generator in hlb_select, records the stream's labels; a wrapper of
    the update records the labels each step trains on."""

    hlb_trick_info, hlb_config_model = trick("draws", "draws from ctx.generator in hlb_select")

    def __init__(self):
        self.replayed, self.trained = [], []

    @hookimpl
    def hlb_select(self, stream, ctx):
        torch.rand(1000, device=ctx.device, generator=ctx.generator)
        self.replayed = [labels.clone() for _, _, labels in stream]
        return None

    @hookimpl(wrapper=True)
    def hlb_update_build(self, parts):
        inner = yield

        def update(x, targets, weights, i):
            self.trained.append(targets.clone())
            return inner(x, targets, weights, i)

        return update


def test_drawing_from_the_generator_in_select_leaves_the_run_on_the_replayed_stream():
    trick_ = DrawsInSelect()
    cfg, tm = testing.resolve_config(trick_)
    testing.run(testing.session(cfg, tm))
    assert len(trick_.trained) == len(trick_.replayed) > 0
    assert all(torch.equal(a, b) for a, b in zip(trick_.trained, trick_.replayed))


class WarmRestarts:
    """Its own lr schedule (cosine with restarts): the core's train.lr_start/lr_peak_at/lr_end
    do nothing while it is on, so it declares them."""

    hlb_trick_info, hlb_config_model = trick("warm_restarts", "cosine lr with two restarts",
                                             overrides=("train.lr_start", "train.lr_peak_at", "train.lr_end"))

    @hookimpl
    def hlb_lr_schedule(self, total_steps):
        x = torch.arange(total_steps + 1) / (total_steps + 1)
        return 0.5 * (1 + torch.cos(torch.pi * ((2 * x) % 1)))


def test_a_tricks_lr_schedule_takes_over_from_the_cores():
    cfg, tm = testing.resolve_config(WarmRestarts())
    plan = testing.plan(testing.session(cfg, tm))
    t = cfg.train
    core = piecewise_linear(plan.ctx.total_steps, t.lr_start, t.lr_peak_at, t.lr_end).tolist()
    assert plan.lr_table[0] == pytest.approx(1.0) and plan.lr_table != pytest.approx(core)


def test_an_arm_that_enables_a_trick_accepts_the_core_settings_it_overrides():
    """`hlb ablate --enable warm_restarts --set train.lr_end=0.1`: the baseline trains with the
    setting, the +warm_restarts arm sets the lr itself; hlb train with both is refused."""
    extra = {"warm_restarts": WarmRestarts()}
    sets = tiny_sets("train.lr_end=0.1")
    cfg, _ = resolve("smoke", sets=sets, enable=["warm_restarts"], extra=extra, arm=True)
    assert cfg.train.lr_end == 0.1
    with pytest.raises(testing.ConfigError, match="does nothing while trick 'warm_restarts' is active"):
        resolve("smoke", sets=sets, enable=["warm_restarts"], extra=extra)


def test_a_swapped_in_tricks_settings_reach_only_its_arm():
    """`hlb ablate --swap translate=cutout --set cutout.size=4`: accepted; the swap arm trains
    cutout with size 4, the baseline has no cutout section."""
    base, swap = plan_battery(AblateOptions(preset="smoke", sets=tiny_sets("cutout.size=4"), swap=["translate=cutout"], runs=1))
    assert "cutout" not in base.config and base.config["translate"]
    assert swap.name == "translate->cutout" and swap.config["cutout"]["size"] == 4 and "translate" not in swap.config


class Lines(Tracker):
    """A tracker of a trick author's: one JSON line per epoch and per run."""

    def start(self, command):
        self.path = command.out / "lines.jsonl"

    def _write(self, **row):
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def epoch(self, run, metrics):
        self._write(seed=run.seed, epoch=metrics["epoch"])

    def run_end(self, run, record, path):
        self._write(seed=run.seed, status=record["status"])


def test_a_tracker_is_tested_with_the_testing_helper(tmp_path):
    summary = testing.track(Lines(), out=tmp_path, runs=2)
    lines = [json.loads(x) for x in (tmp_path / "lines.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in summary["runs"]] == [0, 1]
    assert lines == [{"seed": 0, "epoch": 1}, {"seed": 0, "epoch": 2}, {"seed": 0, "status": "completed"},
                     {"seed": 1, "epoch": 1}, {"seed": 1, "epoch": 2}, {"seed": 1, "status": "completed"}]


def test_the_tracker_helper_lets_a_trackers_error_go_up(tmp_path):
    class Broken(Tracker):
        def run_end(self, run, record, path):
            raise KeyError("status")

    with pytest.raises(KeyError):
        testing.track(Broken(), out=tmp_path)
