"""The machine a run's time was measured on, as a fingerprint: the device (name, memory; on
CUDA the driver, SM and memory clocks, whether application clocks are locked, the power limit,
persistence mode), the CPU (model, vector extensions), torch's threads and torch's build.

Computed once per process and device (:func:`fingerprint`), fast: GPU details come from NVIDIA's
management library through its Python binding (``pynvml``, the optional ``nvidia-ml-py``, extra
``hlbcli[gpu]``); without it, or when it fails, they read ``"unknown"``, never an error. No
``nvidia-smi`` is run. :func:`same_machine` says whether two fingerprints are the same machine
for timing, and names the first field that differs; a record written before records had a
fingerprint is an unknown machine, never a difference."""

from __future__ import annotations

import platform
import sys
from functools import lru_cache
from typing import Any

import torch

UNKNOWN = "unknown"
#: the /proc/cpuinfo flags (x86) and features (ARM) that change how fast torch's CPU kernels are
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimdhp", "sve", "sve2")
#: what makes a machine the same for timing, in the order a difference is named
SAME = ("device", "cpu", "vector_extensions", "threads", "clocks_locked", "driver", "torch", "cuda", "cudnn",
        "mkl", "mkldnn")


def _cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, list[str]]:
    """(the CPU's model, its vector extensions) from ``path``; the platform module's words and
    ``unknown`` elsewhere."""
    model, flags = None, None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if model is None and key in ("model name", "hardware", "cpu model"):
                    model = value.strip()
                elif flags is None and key in ("flags", "features"):
                    flags = set(value.split())
                if model is not None and flags is not None:
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or UNKNOWN
    return model, [f for f in VECTOR_FLAGS if f in flags] if flags is not None else [UNKNOWN]


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _nvml(index: int, uuid: str | None) -> dict:
    """What NVML says of the GPU (by its UUID, else torch's index): each field ``unknown`` that
    it cannot say, all of them when ``pynvml`` is missing or fails to start."""
    got = dict.fromkeys(("driver", "sm_clock_mhz", "memory_clock_mhz", "clocks_locked", "power_limit_w",
                         "persistence_mode"), UNKNOWN)
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # absent, or no driver to talk to: unknown
        return got
    try:
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid) if uuid else pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        reads = {
            "driver": lambda: _text(pynvml.nvmlSystemGetDriverVersion()),
            "sm_clock_mhz": lambda: int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
            "memory_clock_mhz": lambda: int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)),
            # application clocks set away from their defaults (nvidia-smi -ac): locked
            "clocks_locked": lambda: (pynvml.nvmlDeviceGetApplicationsClock(handle, pynvml.NVML_CLOCK_SM)
                                      != pynvml.nvmlDeviceGetDefaultApplicationsClock(handle, pynvml.NVML_CLOCK_SM)),
            "power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
            "persistence_mode": lambda: pynvml.nvmlDeviceGetPersistenceMode(handle) == pynvml.NVML_FEATURE_ENABLED,
        }
        for key, read in reads.items():
            try:
                got[key] = read()
            except Exception:
                pass
    except Exception:
        pass
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return got


def _gpu(device: torch.device) -> dict:
    """The CUDA device's fields (``None`` each on the CPU: nothing to say)."""
    keys = ("gpu_memory_gib", "driver", "sm_clock_mhz", "memory_clock_mhz", "clocks_locked", "power_limit_w",
            "persistence_mode")
    if device.type != "cuda":
        return {"device": "cpu", **dict.fromkeys(keys)}
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    uuid = None if uuid is None else (str(uuid) if str(uuid).startswith("GPU-") else f"GPU-{uuid}")
    return {"device": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1), **_nvml(index, uuid)}


def _torch_build() -> dict:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": cudnn,
            "mkl": torch.backends.mkl.is_available(), "mkldnn": torch.backends.mkldnn.is_available()}


@lru_cache(maxsize=None)
def _fingerprint(device: str, threads: int) -> dict:
    cpu, flags = _cpuinfo() if sys.platform.startswith("linux") else (platform.processor() or platform.machine() or UNKNOWN, [UNKNOWN])
    return {**_gpu(torch.device(device)), "cpu": cpu, "vector_extensions": flags, "threads": threads, **_torch_build()}


def fingerprint(device: torch.device | str) -> dict:
    """The machine ``device`` trains on (see the module); once per process, device and thread
    count. A fresh copy: the caller may change it."""
    return dict(_fingerprint(str(device), torch.get_num_threads()))


def difference(a: Any, b: Any) -> str | None:
    """The first field of :data:`SAME` in which fingerprints ``a`` and ``b`` differ (``cpu:
    'X' vs 'Y'``), or None: the same machine for timing, or either unknown (not a fingerprint:
    a record written before records had one). A field either side does not know is skipped."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return None
    for key in SAME:
        x, y = a.get(key), b.get(key)
        if UNKNOWN in (x, y) or x == [UNKNOWN] or y == [UNKNOWN]:
            continue
        if x != y:
            show = lambda v: " ".join(v) if isinstance(v, list) else repr(v)  # noqa: E731
            return f"{key}: {show(x)} vs {show(y)}"
    return None


def same_machine(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same machine for timing (:func:`difference`)."""
    return difference(a, b) is None


def runs_machine(runs: list[dict]) -> dict | None:
    """The machine ``runs`` ran on, as their records name it: the one fingerprint when they
    share it; ``{"mixed": "FIELD: X vs Y", "machines": [...]}`` when they do not; None when
    none names one."""
    seen: list[dict] = []
    for r in runs:
        m = r.get("machine") if isinstance(r, dict) else None
        if isinstance(m, dict) and m not in seen:
            seen.append(m)
    if not seen:
        return None
    first = seen[0]
    for m in seen[1:]:
        why = difference(first, m)
        if why:
            return {"mixed": why, "machines": seen}
    return first


def machine_of(what: Any) -> dict | None:
    """A fingerprint, or the one fingerprint of a :func:`runs_machine` answer (None: mixed or
    unknown)."""
    return what if isinstance(what, dict) and "mixed" not in what else None


def warn_different(name_a: str, a: Any, name_b: str, b: Any) -> str | None:
    """One ``warning:`` line on stderr when ``a`` and ``b`` (fingerprints, or
    :func:`runs_machine` answers) are different machines; the line, or None."""
    if isinstance(a, dict) and "mixed" in a:
        why = f"{name_a} ran on more than one machine ({a['mixed']})"
    elif isinstance(b, dict) and "mixed" in b:
        why = f"{name_b} ran on more than one machine ({b['mixed']})"
    else:
        diff = difference(a, b)
        why = f"{name_a} and {name_b} ran on different machines ({diff})" if diff else None
    if why is None:
        return None
    line = f"warning: {why}: their times are not comparable"
    print(line, file=sys.stderr, flush=True)
    return line
