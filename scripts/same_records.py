"""Whether two folders of run records trained the same numbers: for a refactor that must keep
behaviour identical (the same preset, seeds and machine before and after).

    python scripts/same_records.py BEFORE_DIR AFTER_DIR

Compares each ``run-*.json`` of BEFORE_DIR with the one of the same name in AFTER_DIR, every
value bit for bit (floats by their repr), leaving out what differs between two runs of the
same code: wall-clock times, dates, the process and the commit. Prints one line per record and
exits 1 at the first difference it names."""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: keys whose values are times, dates or provenance, never the numbers a run trained
IGNORED = {"train_seconds", "elapsed", "phases", "timestamp", "started", "finished", "git_commit", "git_dirty",
           "load_seconds", "build_seconds", "compile_seconds", "seconds", "pid", "host", "out", "versions", "machine", "timer"}


def _diff(a, b, where: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in IGNORED or k.endswith("_seconds") or k.endswith("_s"):
                continue
            if k not in a or k not in b:
                return f"{where}.{k}: only in {'after' if k in b else 'before'}"
            d = _diff(a[k], b[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} items before, {len(b)} after"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _diff(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if repr(a) == repr(b) else f"{where}: {a!r} before, {b!r} after"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    before, after = Path(argv[0]), Path(argv[1])
    names = sorted(p.name for p in before.glob("run-*.json"))
    if not names:
        print(f"error: no run records in {before}", file=sys.stderr)
        return 2
    for name in names:
        if not (after / name).is_file():
            print(f"{name}: missing in {after}")
            return 1
        d = _diff(json.loads((before / name).read_text()), json.loads((after / name).read_text()), name)
        if d:
            print(f"differs: {d}")
            return 1
        print(f"{name}: identical (times, dates and provenance left out)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
