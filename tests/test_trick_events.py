"""What a trick sees of a run's events: ``hlb_run_end`` once per run whatever its outcome,
``final`` on the evaluation hooks, the last epoch's ``hlb_epoch_end`` with the final accuracy,
the arm and output folder on the context, the core's evaluation pieces and the run's generator."""

from __future__ import annotations

import signal

import pytest
import torch
from pydantic import Field

from hlbcli import hookimpl, testing
from hlbcli.config import Settings
from hlbcli.contract import Transform, trick
from hlbcli.errors import TrickBug
from hlbcli.signals import Interrupted


class SpySettings(Settings):
    fail: str = Field("", description="where to go wrong, words: epoch_start, interrupt, run_end")
    fail_at: int = Field(1, ge=0, description="the epoch (0-based) of epoch_start and interrupt")


class Spy:
    """Records every event it is told of, in order; goes wrong where its settings say."""

    hlb_trick_info, hlb_config_model = trick("spy", "records the run's events", SpySettings)

    def __init__(self):
        self.events: list[tuple] = []

    @hookimpl
    def hlb_train_start(self, ctx):
        self.events.append(("train_start", ctx.seed))

    @hookimpl
    def hlb_epoch_start(self, epoch, ctx):
        s = ctx.cfg.spy
        if "epoch_start" in s.fail.split() and epoch == s.fail_at:
            raise ValueError("spy broke on purpose")

    @hookimpl
    def hlb_epoch_end(self, epoch, metrics, ctx):
        self.events.append(("epoch_end", epoch, dict(metrics)))
        s = ctx.cfg.spy
        if "interrupt" in s.fail.split() and epoch == s.fail_at:
            raise Interrupted(signal.SIGINT)

    @hookimpl
    def hlb_train_end(self, ctx):
        self.events.append(("train_end",))

    @hookimpl(wrapper=True)
    def hlb_eval_forward(self, final):
        forward = yield
        self.events.append(("eval_forward", final))
        return forward

    @hookimpl(wrapper=True)
    def hlb_evaluate(self, final):
        result = yield
        self.events.append(("evaluate", final, result["accuracy"]))
        return result

    @hookimpl
    def hlb_run_end(self, ctx, status, metrics, phases):
        self.events.append(("run_end", ctx.seed, status, metrics, dict(phases), ctx.arm, ctx.out))
        if "run_end" in ctx.cfg.spy.fail.split():
            raise RuntimeError("spy's run end broke")

    def ends(self) -> list[tuple]:
        return [e for e in self.events if e[0] == "run_end"]

    def names(self) -> list[str]:
        return [e[0] for e in self.events]


def _setup(*sets: str):
    spy = Spy()
    cfg, tm = testing.resolve_config(spy, sets=list(sets))
    return spy, cfg, tm


def test_run_end_fires_once_per_completed_run_after_the_final_evaluation(tmp_path):
    from hlbcli.experiments.batch import TrainOptions, train_batch

    spy, cfg, tm = _setup("train.epochs=3")
    summary, code = train_batch(cfg, tm, TrainOptions(runs=2, seed=5, device="cpu", quiet=True, download=False,
                                                     out=tmp_path / "out", label="+spy"))
    assert code == 0
    ends = spy.ends()
    assert [(e[1], e[2]) for e in ends] == [(5, "completed"), (6, "completed")]
    for (_, seed, _, metrics, phases, arm, out), rec in zip(ends, summary["runs"]):
        assert metrics == rec["final"] and metrics["accuracy"] == rec["accuracy"] and "loss" in metrics
        assert set(phases) == {"init", "train", "eval"} and phases == rec["phases"]
        assert arm == "+spy" and out.resolve() == (tmp_path / "out").resolve()
    # per run: ... the last epoch's epoch_end after the final evaluation, run_end last
    per_run = spy.names()[: spy.names().index("run_end") + 1]
    assert per_run == ["train_start", "evaluate", "epoch_end", "evaluate", "epoch_end", "train_end", "eval_forward",
                       "evaluate", "epoch_end", "run_end"]


def test_plain_train_has_no_arm_and_no_folder():
    spy, cfg, tm = _setup()
    testing.train(cfg, tm)
    (end,) = spy.ends()
    assert end[2] == "completed" and end[5] is None and end[6] is None


def test_final_is_true_only_for_the_final_evaluation():
    spy, cfg, tm = _setup("train.epochs=3")
    testing.train(cfg, tm)
    evals = [e for e in spy.events if e[0] in ("evaluate", "eval_forward")]
    assert evals[:2] == [("evaluate", False, evals[0][2]), ("evaluate", False, evals[1][2])]
    assert [e[:2] for e in evals[2:]] == [("eval_forward", True), ("evaluate", True)]


def test_the_last_epoch_end_sees_the_final_accuracy_and_epochs_count_from_0_and_1():
    spy, cfg, tm = _setup("train.epochs=3")
    rec = testing.train(cfg, tm)["runs"][0]
    ends = [e for e in spy.events if e[0] == "epoch_end"]
    assert [e[1] for e in ends] == [0, 1, 2]  # the hook's epoch: from 0
    assert [e[2]["epoch"] for e in ends] == [1, 2, 3]  # the row's (the table's): from 1
    assert [e[2] for e in ends] == rec["epochs"]  # the rows the record holds, as they were
    assert ends[-1][2]["val_acc"] == rec["accuracy"] == spy.ends()[0][3]["accuracy"]
    assert all(e[2]["val_acc"] is not None for e in ends)


def test_the_last_epoch_end_without_per_epoch_evaluation():
    spy, cfg, tm = _setup("train.eval_every_epoch=false")
    rec = testing.train(cfg, tm)["runs"][0]
    ends = [e for e in spy.events if e[0] == "epoch_end"]
    assert [e[2]["val_acc"] for e in ends] == [None, rec["accuracy"]]
    assert [e[1] for e in spy.events if e[0] == "evaluate"] == [True]


def test_run_end_for_a_diverged_run():
    spy, cfg, tm = _setup("train.lr=1e300")
    rec = testing.train(cfg, tm)["runs"][0]
    assert rec["status"] == "diverged"
    ((_, _, status, metrics, phases, _, _),) = spy.ends()
    assert status == "diverged" and metrics is None and phases["train"] > 0 and phases["eval"] == 0
    assert "train_end" not in spy.names()


def test_run_end_for_a_failed_run_comes_after_its_record(tmp_path):
    spy, cfg, tm = _setup('spy.fail="epoch_start"')
    s = testing.session(cfg, tm)
    kept: list[dict] = []

    def keep(rec):
        kept.append(dict(rec))
        spy.events.append(("kept",))

    from hlbcli.run import run_seed

    with pytest.raises(TrickBug, match="trick 'spy'.*spy broke on purpose.*hlb_epoch_start"):
        run_seed(s, 0, keep=keep)
    assert spy.names()[-2:] == ["kept", "run_end"]
    assert kept[0]["status"] == "failed" and "spy broke on purpose" in kept[0]["message"]
    ((_, _, status, metrics, phases, _, _),) = spy.ends()
    assert status == "failed" and metrics is None and set(phases) == {"init", "train", "eval"}


def test_run_end_for_an_interrupted_run():
    spy, cfg, tm = _setup('spy.fail="interrupt"', "spy.fail_at=0")
    s = testing.session(cfg, tm)
    kept: list[dict] = []
    from hlbcli.run import run_seed

    with pytest.raises(Interrupted):
        run_seed(s, 3, keep=kept.append)
    assert [r["status"] for r in kept] == ["interrupted"]
    assert [(e[1], e[2], e[3]) for e in spy.ends()] == [(3, "interrupted", None)]


def test_a_failing_run_end_is_the_tricks_bug_and_the_record_is_kept_first(tmp_path):
    import json

    from hlbcli.experiments.batch import TrainOptions, train_batch

    spy, cfg, tm = _setup('spy.fail="run_end"')
    with pytest.raises(TrickBug, match="trick 'spy'.*spy's run end broke in hlb_run_end") as e:
        train_batch(cfg, tm, TrainOptions(runs=2, device="cpu", quiet=True, download=False, out=tmp_path))
    assert e.value.exit_code == 2
    (path,) = tmp_path.glob("run-*.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "completed" and rec["accuracy"] == spy.ends()[0][3]["accuracy"]
    assert len(spy.ends()) == 1  # the batch stopped at the bug
    assert json.loads((tmp_path / "summary.json").read_text())["partial"] is True


def test_a_failing_run_end_after_a_diverged_run_keeps_its_record():
    spy, cfg, tm = _setup('spy.fail="run_end"', "train.lr=1e300")
    s = testing.session(cfg, tm)
    kept: list[dict] = []
    from hlbcli.run import run_seed

    with pytest.raises(TrickBug, match="hlb_run_end"):
        run_seed(s, 0, keep=kept.append)
    assert [r["status"] for r in kept] == ["diverged"]


def test_a_failing_run_end_while_a_run_fails_leaves_the_runs_own_error():
    spy, cfg, tm = _setup('spy.fail="epoch_start run_end"')
    s = testing.session(cfg, tm)
    from hlbcli.run import run_seed

    with pytest.raises(TrickBug, match="spy broke on purpose.*hlb_epoch_start") as e:
        run_seed(s, 0)
    assert [x[2] for x in spy.ends()] == ["failed"]
    assert any("hlb_run_end then failed too" in note for note in e.value.__notes__)


def test_run_record_and_the_warm_up_call_run_end():
    from hlbcli.run import warm_up

    spy, cfg, tm = _setup()
    s = testing.session(cfg, tm)
    s.compiled = True  # not compiled, but warmed up as if: two steps per epoch
    warm_up(s, 0, arm="baseline")
    rec = testing.run_record(s, 1)
    assert [(e[1], e[2], e[5]) for e in spy.ends()] == [(0, "completed", "baseline"), (1, "completed", None)]
    assert rec["final"] == spy.ends()[1][3]


def test_the_exported_evaluation_gives_the_cores_numbers():
    from hlbcli.data import normalize as data_normalize
    from hlbcli.evaluation import eval_logits, evaluate, net_input, normalize, scores

    assert data_normalize is normalize  # one copy
    cfg, tm = testing.resolve_config(sets=["train.eval_batch_size=50", "train.channels_last=true"])
    s = testing.session(cfg, tm)
    plan = testing.plan(s, 0)
    ctx, ds, model = plan.ctx, s.dataset, s.model
    core = tm.hook.hlb_evaluate(model=model, images=ds.test_images, labels=ds.test_labels, forward=model, ctx=ctx,
                                final=False)
    assert model.training and torch.is_grad_enabled()  # the mode is given back
    assert evaluate(model, ds.test_images, ds.test_labels, model, ctx) == core
    logits = eval_logits(model, ds.test_images, model, ctx)
    assert logits.shape == (len(ds.test_labels), ds.num_classes) and logits.dtype == torch.float32
    assert scores(logits, ds.test_labels, ctx.eval_batch_size) == core
    assert core["accuracy"] == (logits.argmax(1) == ds.test_labels).float().mean().item()
    mean_ce = torch.nn.functional.cross_entropy(logits, ds.test_labels).item()
    assert core["loss"] == pytest.approx(mean_ce, rel=1e-5)
    x = net_input(ds.test_images[:4], ctx)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == ctx.dtype
    m, sd = torch.tensor(ds.mean).view(1, -1, 1, 1), torch.tensor(ds.std).view(1, -1, 1, 1)
    assert torch.equal(x, (ds.test_images[:4].float() / 255 - m) / sd)  # mean/std in fractions of 255


def test_the_generator_is_on_the_device_seeded_and_given_to_epoch_transforms():
    seen: list = []

    class Draw:
        hlb_trick_info, hlb_config_model = trick("draw", "draws from the run's generator")

        @hookimpl
        def hlb_batch_transforms(self, ctx):
            def fn(images, epoch, generator):
                seen.append((ctx.seed, epoch, generator is ctx.generator, generator.device,
                             torch.rand(3, device=ctx.device, generator=generator).tolist()))
                return images

            return [Transform("draw", fn, level="epoch")]

    cfg, tm = testing.resolve_config(Draw())
    s = testing.session(cfg, tm)
    ctx = testing.plan(s, 7).ctx
    assert isinstance(ctx.generator, torch.Generator) and ctx.generator.device == ctx.device == s.device
    first = torch.rand(4, generator=ctx.generator, device=ctx.device)
    again = torch.rand(4, generator=testing.plan(s, 7).ctx.generator, device=ctx.device)
    other = torch.rand(4, generator=testing.plan(s, 8).ctx.generator, device=ctx.device)
    assert torch.equal(first, again) and not torch.equal(first, other)
    testing.run(s, 7)
    testing.run(s, 7)
    assert [x[:4] for x in seen] == [(7, 0, True, s.device), (7, 1, True, s.device)] * 2
    assert [x[4] for x in seen[:2]] == [x[4] for x in seen[2:]]  # the same draws for the same seed


def test_resolve_config_errors_are_the_testing_apis():
    spy = Spy()
    with pytest.raises(testing.ConfigError) as e:
        testing.resolve_config(spy, sets=["spy.fail_at=-1"])
    assert e.value.rows[0][0] == "spy.fail_at"
    with pytest.raises(testing.UsageError):
        testing.resolve_config(spy, sets=["nonsense"])
    with pytest.raises(testing.UsageError):
        testing.resolve_config(spy, preset="no-such-preset")
