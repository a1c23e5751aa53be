"""The machine a run was timed on (hlbcli.machine: the fingerprint in every record, summary and
bench.json, on hlb report's page, and the one warning line when two sets of runs differ) and
the timer that timed it (hlbcli.timers: hlb bench --timer wall|cuda-events)."""

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from conftest import set_args, tiny_sets
from hlbcli import machine, readback, timers
from hlbcli.errors import UsageError
from hlbcli.record import write_json

ONE_EPOCH = set_args(tiny_sets("train.epochs=1"))


def _train(cli, out: Path, *more: str) -> list[Path]:
    code, _, err = cli("train", "--preset", "smoke", "-q", *ONE_EPOCH, "--out", out, *more)
    assert code == 0, err
    return sorted(out.glob("run-*.json"))


def _edit(path: Path, **machine_fields) -> None:
    """The record at ``path`` as if timed on another machine (None: written before records had one)."""
    rec = json.loads(path.read_text())
    if machine_fields.get("machine", 0) is None:
        rec.pop("machine")
    else:
        rec["machine"] = {**rec["machine"], **machine_fields}
    write_json(path, rec)


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "different machines" in line or "more than one machine" in line]


# --- the fingerprint --------------------------------------------------------------------------


def test_fingerprint_on_the_cpu_names_cpu_threads_and_torch_build_once_per_process():
    fp = machine.fingerprint(torch.device("cpu"))
    assert fp["device"] == "cpu" and fp["gpu_memory_gib"] is None and fp["driver"] is None
    assert fp["threads"] == torch.get_num_threads() and fp["torch"] == torch.__version__
    assert fp["mkl"] == torch.backends.mkl.is_available() and fp["mkldnn"] == torch.backends.mkldnn.is_available()
    assert isinstance(fp["cpu"], str) and fp["cpu"] and isinstance(fp["vector_extensions"], list)
    hits = machine._fingerprint.cache_info().hits
    fp["cpu"] = "changed by the caller"
    assert machine.fingerprint("cpu")["cpu"] != "changed by the caller"
    assert machine._fingerprint.cache_info().hits == hits + 1  # computed once


def test_cpuinfo_reads_the_model_and_the_vector_extensions(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                    "flags\t\t: fpu sse sse4_2 avx avx2 fma avx512f avx512bw amx_tile\n\nprocessor\t: 1\n")
    assert machine._cpuinfo(str(info)) == ("Intel(R) Xeon(R) Platinum 8480+", ["sse4_2", "avx", "avx2", "fma", "avx512f",
                                                                              "avx512bw", "amx_tile"])
    (tmp_path / "arm").write_text("CPU implementer\t: 0x41\nFeatures\t: fp asimd sve\n")
    assert machine._cpuinfo(str(tmp_path / "arm"))[1] == ["asimd", "sve"]
    model, flags = machine._cpuinfo(str(tmp_path / "missing"))
    assert model and flags == ["unknown"]


class FakeNVML(types.ModuleType):
    """pynvml as NVIDIA documents it, answering for one GPU; ``fail`` names the calls that raise."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_FEATURE_ENABLED = 1, 2, 1

    def __init__(self, fail=(), init_fails=False):
        super().__init__("pynvml")
        self.fail, self.init_fails, self.shutdown = set(fail), init_fails, 0

    def __getattribute__(self, name):
        if name.startswith("nvml") and name in object.__getattribute__(self, "fail"):
            raise RuntimeError(f"NVMLError: {name}")
        return object.__getattribute__(self, name)

    def nvmlInit(self):
        if self.init_fails:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdown += 1

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return ("handle", uuid)

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlDeviceGetClockInfo(self, h, clock):
        return {1: 1980, 2: 2619}[clock]

    def nvmlDeviceGetApplicationsClock(self, h, clock):
        return 1755

    def nvmlDeviceGetDefaultApplicationsClock(self, h, clock):
        return 1980

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700000

    def nvmlDeviceGetPersistenceMode(self, h):
        return 1


def test_gpu_fields_come_from_nvml_and_read_unknown_without_it(monkeypatch):
    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=80 * 2**30, uuid="1234-abcd")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    nvml = FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    got = machine._gpu(torch.device("cuda"))
    assert got == {"device": "NVIDIA H100 80GB HBM3", "gpu_memory_gib": 80.0, "driver": "550.54.15", "sm_clock_mhz": 1980,
                   "memory_clock_mhz": 2619, "clocks_locked": True, "power_limit_w": 700.0, "persistence_mode": True}
    assert nvml.shutdown == 1
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(fail={"nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetHandleByUUID"}))
    got = machine._gpu(torch.device("cuda:0"))
    assert got["power_limit_w"] == "unknown" and got["driver"] == "550.54.15"  # by index, the rest read
    for broken in (None, FakeNVML(init_fails=True)):  # absent (import fails), or no driver: unknown, no error
        monkeypatch.setitem(sys.modules, "pynvml", broken)
        got = machine._gpu(torch.device("cuda"))
        assert got["device"] == "NVIDIA H100 80GB HBM3" and got["driver"] == got["clocks_locked"] == "unknown"


def test_same_machine_names_the_first_field_that_differs_and_skips_the_unknown():
    a = machine.fingerprint("cpu")
    assert machine.same_machine(a, dict(a)) and machine.difference(a, dict(a)) is None
    b = {**a, "threads": a["threads"] + 1, "cpu": "AMD EPYC 9654"}
    assert machine.difference(a, b) == f"cpu: {a['cpu']!r} vs 'AMD EPYC 9654'"  # cpu comes before threads
    assert not machine.same_machine(a, b)
    assert machine.difference(a, {**a, "vector_extensions": ["avx2"]}).startswith("vector_extensions: ")
    assert machine.difference(a, {**a, "driver": "unknown", "vector_extensions": ["unknown"]}) is None
    assert machine.difference(a, {**a, "power_limit_w": 300}) is None  # not a field that makes it another machine
    assert machine.difference(a, None) is None and machine.difference("x", a) is None  # an old record: unknown
    runs = [{"machine": a}, {"machine": dict(a)}, {"seed": 3}]
    assert machine.runs_machine(runs) == a and machine.runs_machine([{"seed": 1}]) is None
    mixed = machine.runs_machine(runs + [{"machine": b}])
    assert mixed["mixed"].startswith("cpu: ") and len(mixed["machines"]) == 2


# --- records, summaries, bench.json and the report --------------------------------------------


def test_records_and_summary_carry_the_machine_and_old_records_pass_readback(cli, tmp_path):
    recs = _train(cli, tmp_path, "--runs", "2")
    rec = json.loads(recs[0].read_text())
    assert rec["machine"] == machine.fingerprint("cpu") and rec["timer"] == "wall"
    assert json.loads((tmp_path / "summary.json").read_text())["machine"] == rec["machine"]
    assert readback.check_record(rec) is None
    old = {k: v for k, v in rec.items() if k not in ("machine", "timer")}
    assert readback.check_record(old) is None  # written before this change: still accepted


def test_resume_on_another_machine_is_one_warning_line_and_an_old_record_none(cli, tmp_path):
    recs = _train(cli, tmp_path, "--runs", "1")
    _edit(recs[0], cpu="Some Other CPU")
    code, _, err = cli("train", "--preset", "smoke", "-q", *ONE_EPOCH, "--out", tmp_path, "--runs", "2", "--resume")
    assert code == 0, err
    (line,) = _warnings(err)
    assert line.startswith("warning: the records kept in ") and "cpu: 'Some Other CPU' vs " in line
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["machine"]["mixed"].startswith("cpu: ")
    for p in sorted(tmp_path.glob("run-*.json")):
        _edit(p, machine=None)  # records written before records had a machine
    code, _, err = cli("train", "--preset", "smoke", "-q", *ONE_EPOCH, "--out", tmp_path, "--runs", "3", "--resume")
    assert code == 0 and not _warnings(err), err


def test_compare_warns_once_when_the_folders_ran_on_different_machines(cli, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _train(cli, a, "--runs", "2")
    recs = _train(cli, b, "--runs", "2", "--set", "train.lr=0.5")
    code, _, err = cli("compare", a, b)
    assert code == 0 and not _warnings(err), err
    for p in recs:
        _edit(p, device="NVIDIA A100-SXM4-40GB")
    code, _, err = cli("compare", a, b)
    (line,) = _warnings(err)
    assert code == 0 and f"{a} and {b} ran on different machines (device: 'cpu' vs 'NVIDIA A100-SXM4-40GB')" in line
    for p in recs:
        _edit(p, machine=None)
    code, _, err = cli("compare", a, b)
    assert code == 0 and not _warnings(err), err


def test_bench_json_and_report_show_the_machine_and_the_timer(cli, tmp_path):
    code, _, err = cli("bench", "--preset", "smoke", *ONE_EPOCH, "--runs", "2", "--out", tmp_path)
    assert code == 0, err
    b = json.loads((tmp_path / "bench.json").read_text())
    fp = machine.fingerprint("cpu")
    assert b["machine"] == fp and b["timer"] == "wall"
    assert "final evaluation with TTA" in b["timed"] and "compilation and warm-up" in b["timed"]
    code, out, err = cli("report", tmp_path)
    assert code == 0, err
    page = Path(out.strip()).read_text()
    env = page[page.index('id="environment"'):]
    assert "vector extensions" in env and " ".join(fp["vector_extensions"]) in env and fp["cpu"] in env
    assert "<td>machine</td><td>one</td>" in env and "<td>timer</td><td>wall</td>" in env
    for p in tmp_path.glob("run-*.json"):
        _edit(p, machine=None)
    cli("summary", tmp_path)
    code, out, err = cli("report", tmp_path)
    assert code == 0, err
    assert "<td>machine</td><td>not in the records" in Path(out.strip()).read_text()


# --- the timer --------------------------------------------------------------------------------


def test_timer_option_is_checked_before_anything_trains(cli, tmp_path):
    code, _, err = cli("bench", "--preset", "smoke", "--timer", "stopwatch", "--out", tmp_path / "x")
    assert code == 2 and err.strip() == "error: --timer 'stopwatch' is not a timer (use --timer wall or --timer cuda-events)"
    code, _, err = cli("bench", "--preset", "smoke", "--device", "cpu", "--timer", "cuda-events", "--out", tmp_path / "y")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--timer cuda-events needs a CUDA GPU" in err
    assert "--timer wall" in err and not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    with pytest.raises(UsageError):
        timers.check_timer("cuda-events", "cpu")
    timers.check_timer("wall", "cpu")


def test_wall_timer_on_the_cpu_and_cuda_events_read_elapsed_time_in_seconds(monkeypatch):
    t = timers.TIMERS["wall"](torch.device("cpu"))
    t0 = t.start()
    assert t.name == "wall" and 0 <= t.seconds(t0) < 5
    calls = []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.synced = False

        def record(self, stream=None):
            calls.append(("record", stream))

        def synchronize(self):
            self.synced = True

        def elapsed_time(self, end):
            assert end.synced  # the end is waited for before it is read
            return 1234.5

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: f"stream of {device}")
    t = timers.TIMERS["cuda-events"](torch.device("cuda:1"))
    assert t.name == "cuda-events" and t.seconds(t.start()) == pytest.approx(1.2345)
    assert calls == [("record", "stream of cuda:1")] * 2


def test_ablate_resume_on_another_machine_is_one_warning_line(cli, tmp_path):
    args = ["ablate", "--preset", "smoke", *ONE_EPOCH, "--disable", "ema", "--out", tmp_path, "-q"]
    code, _, err = cli(*args, "--runs", "1")
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    fp = summary["machine"]  # the arms' own (their processes' threads)
    assert fp["cpu"] == machine.fingerprint("cpu")["cpu"] and fp["device"] == "cpu" and not _warnings(err)
    for p in tmp_path.glob("arms/*/run-*.json"):
        _edit(p, threads=999)
    code, _, err = cli(*args, "--runs", "2", "--resume")
    assert code == 0, err
    (line,) = _warnings(err)
    assert f"the runs kept in {tmp_path} and the runs trained now ran on different machines (threads: 999 vs " in line
