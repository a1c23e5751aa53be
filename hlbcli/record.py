"""Run records and summaries, written atomically."""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from hlbcli import stats
from hlbcli.errors import UsageError


def versions() -> dict[str, str]:
    import pluggy
    import pydantic
    import torch
    import torchvision

    from hlbcli import __version__

    return {
        "hlbcli": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pydantic": pydantic.__version__,
        "pluggy": pluggy.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda or "",
    }


def _clean(obj: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask can only be read by setting it


def _write_atomic(path: Path, write) -> None:
    """Write through ``write(file)`` to a temporary file in the same folder, flush it to disk,
    then rename it over ``path``: a reader (or a killed process) never sees a half-written
    file, and a failure leaves no temporary behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temporary file, then rename): never a half-written file."""
    text = json.dumps(_clean(data), indent=2, allow_nan=False) + "\n"  # serialise before touching disk
    _write_atomic(path, lambda f: f.write(text))


def write_text(path: Path, text: str) -> None:
    """Write text atomically, like :func:`write_json`."""
    _write_atomic(path, lambda f: f.write(text))


def prepare_out_dir(out: str | Path) -> Path:
    """Create ``out`` and check it is writable, before any training starts."""
    p = Path(out)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".hlb-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--out {p} cannot be written: {e.strerror or e}", "choose a folder you can write to") from None
    return p


def summarize(runs: list[dict], **extra: Any) -> dict:
    """n, mean, std, min, max and a 95% CI of the accuracies of the completed runs."""
    done = [r for r in runs if r.get("status") == "completed"]
    accs = [r["accuracy"] for r in done]
    times = [r["train_seconds"] for r in done]
    m, s = stats.mean_std(accs)
    lo, hi = stats.ci95(accs)
    tm, ts = stats.mean_std(times)
    out = {
        "n": len(done),
        "n_started": len(runs),
        "mean_accuracy": m,
        "std_accuracy": s,
        "min_accuracy": min(accs) if accs else float("nan"),
        "max_accuracy": max(accs) if accs else float("nan"),
        "ci95": [lo, hi],
        "mean_train_seconds": tm,
        "std_train_seconds": ts,
        "median_train_seconds": _median(times),
    }
    out.update(extra)
    out["runs"] = runs
    return out


def _median(xs: list[float]) -> float:
    if not xs:
        return float("nan")
    ys = sorted(xs)
    n = len(ys)
    return ys[n // 2] if n % 2 else (ys[n // 2 - 1] + ys[n // 2]) / 2
