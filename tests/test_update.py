"""Tricks that own the step's update (``hlb_update_build``): the built-in ``sam`` computes SAM's
update (against a reference written here from the paper), eager and compiled; an optimizer that
requires a closure (LBFGS) trains; the hook is called once per phase, never per step."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_sets
from hlbcli import hookimpl, testing
from hlbcli.contract import trick
from hlbcli.resolve import resolve
from hlbcli.run import fit
from hlbcli.session import open_session

#: the smoke preset's tricks that act inside a first step (flip and translate act on the epoch's
#: set, before it): none of them, so that the reference below is SAM and SGD alone
PLAIN = ["whitening", "dirac", "noisy_bn", "bias_lr", "label_smoothing", "ema", "tta"]


def _plan(rho: float | None, *sets: str):
    enable = ["sam"] if rho is not None else []
    more = [f"sam.rho={rho}"] if rho is not None else []
    cfg, tm = resolve("smoke", sets=tiny_sets(*more, *sets), enable=enable, disable=PLAIN)
    s = open_session(cfg, tm, "cpu")
    return s, testing.plan(s, seed=0)


def _batch(s, n: int = 32):
    ds = s.dataset
    x = (ds.train_images[:n].float() / 255 - torch.tensor(ds.mean).view(1, -1, 1, 1)) / torch.tensor(ds.std).view(1, -1, 1, 1)
    return x, ds.train_labels[:n]


def reference_sam(model: torch.nn.Module, opt: torch.optim.Optimizer, x, y, rho: float) -> list[torch.Tensor]:
    """SAM's step by the paper (Foret et al. 2021, Algorithm 1), by hand on a copy: g at w, e =
    rho g / ||g||_2, the gradient at w + e, then the base optimizer's step from w with it
    (torch's own SGD, built afresh with the run's group settings). Returns the new weights."""
    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    loss = torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
    g = torch.autograd.grad(loss, params)
    norm = torch.sqrt(sum((gi.double() ** 2).sum() for gi in g))
    w = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, gi in zip(params, g):
            p.add_(gi * (rho / norm).float())
    loss2 = torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
    g2 = torch.autograd.grad(loss2, params)
    with torch.no_grad():
        for p, wi in zip(params, w):
            p.copy_(wi)
    group = opt.param_groups[0]
    base = torch.optim.SGD(params, lr=group["lr"], momentum=group["momentum"], nesterov=group["nesterov"],
                           weight_decay=group["weight_decay"], foreach=False)
    for p, gi in zip(params, g2):
        p.grad = gi.clone()
    base.step()
    return [p.detach().clone() for p in params]


def _one_step(s, plan, x, y) -> list[torch.Tensor]:
    plan.step_fn(s.forward_model, [])(x, y, 0)
    return [p.detach().clone() for p in s.model.parameters() if p.requires_grad]


@pytest.mark.parametrize("rho", [0.05, 0.5])
def test_sam_step_is_sams_update(rho):
    s, plan = _plan(rho)
    assert len(plan.optimizers) == 1 and len(plan.optimizers[0].param_groups) == 1
    x, y = _batch(s)
    opt = copy.deepcopy(plan.optimizers[0])
    opt.param_groups[0]["lr"] = plan.base_lrs[0] * plan.lr_tables[0][0]  # the lr step 0 trains with
    want = reference_sam(s.model, opt, x, y, rho)
    got = _one_step(s, plan, x, y)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()
    # and it is not the plain step: the same batch without sam lands elsewhere
    s2, plan2 = _plan(None)
    plain = _one_step(s2, plan2, x, y)
    assert max((a - b).abs().max().item() for a, b in zip(got, plain)) > 1e-4


def test_sam_trains_and_its_settings_are_checked():
    cfg, tm = resolve("smoke", sets=tiny_sets("sam.rho=0.05"), enable=["sam"])
    res = fit(open_session(cfg, tm, "cpu"), 0)
    assert res.status == "completed" and res.accuracy > 0.2  # chance is 0.1
    with pytest.raises(testing.ConfigError, match="sam.rho"):
        resolve("smoke", sets=tiny_sets("sam.rho=0"), enable=["sam"])


def test_sam_compiled_is_sams_update():
    """Compiled (the forward-and-loss one graph, as train.compile_loss builds it), one SAM step
    from the seed's weights lands where the reference does, within compiled-vs-eager rounding."""
    s, plan = _plan(0.05, 'train.compile="on"')
    assert s.compiled
    x, y = _batch(s)
    opt = copy.deepcopy(plan.optimizers[0])
    opt.param_groups[0]["lr"] = plan.base_lrs[0] * plan.lr_tables[0][0]
    want = reference_sam(s.model, opt, x, y, 0.05)
    plan.step_fn(s.forward_model, [], s.forward_loss(plan.loss_fn, False, plan.ctx))(x, y, 0)
    got = [p.detach().clone() for p in s.model.parameters() if p.requires_grad]
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), (a - b).abs().max()


class Lbfgs:
    """A trick whose optimizer needs a closure: LBFGS over every trained parameter."""

    hlb_trick_info, hlb_config_model = trick("lbfgs", "LBFGS in place of SGD")

    def __init__(self):
        self.calls = 0

    @hookimpl
    def hlb_optimizer_build(self, param_groups):
        opt = torch.optim.LBFGS([p for g in param_groups for p in g["params"]], lr=0.1, max_iter=3)
        step = opt.step

        def counted(closure):
            def counting():
                self.calls += 1
                return closure()
            return step(counting)

        opt.step = counted  # counts the closure's evaluations
        return opt


def test_an_optimizer_that_needs_a_closure_gets_one():
    trick_ = Lbfgs()
    # torch's LBFGS views each gradient flat: channels_last gradients cannot be (its limit, not hlb's)
    cfg, tm = testing.resolve_config(trick_, disable=["ema"], sets=["train.channels_last=false"])
    res = testing.run(testing.session(cfg, tm))
    steps = res.epochs[-1]["steps"]
    assert res.status == "completed"
    assert trick_.calls >= 2 * steps  # LBFGS evaluates the batch more than once a step (max_iter 3)


class Counted:
    """A wrapper of the update: counts its assemblies and the steps it runs."""

    hlb_trick_info, hlb_config_model = trick("counted", "counts updates")

    def __init__(self):
        self.built, self.ran = 0, 0

    @hookimpl(wrapper=True)
    def hlb_update_build(self, parts):
        inner = yield
        self.built += 1

        def update(x, targets, weights, i):
            self.ran += 1
            return inner(x, targets, weights, i)

        return update


def test_the_update_is_built_once_per_phase_and_wrappers_see_the_core_one():
    """cutmix in the last of 2 epochs makes two phases: two assemblies, one update per step."""
    trick_ = Counted()
    cfg, tm = testing.resolve_config(trick_, enable=["cutmix"], sets=["cutmix.last_epochs=1"])
    with testing.HookRecorder(tm) as rec:
        res = testing.run(testing.session(cfg, tm))
    assert res.status == "completed"
    assert trick_.built == rec.count("hlb_update_build") == 2
    assert trick_.ran == res.epochs[-1]["steps"]


class NotAnUpdate:
    hlb_trick_info, hlb_config_model = trick("not_an_update", "returns a string from hlb_update_build")

    @hookimpl
    def hlb_update_build(self):
        return "sam"


def test_an_update_that_is_not_a_function_is_the_tricks_bug_found_at_assembly():
    from hlbcli.errors import TrickBug

    cfg, tm = testing.resolve_config(NotAnUpdate())
    with pytest.raises(TrickBug, match=r"trick 'not_an_update' \(given\) returned .*str.* where a function is due in hlb_update_build"):
        testing.run(testing.session(cfg, tm))
