#!/usr/bin/env bash
# The GPU side by side (issue 9 item 7, issue 11 item 5), as one call on the lent machine:
#   bash ../shared/gpu/prepare.sh
#   run (carry .gpu/part1):                     bash .gpu/part1/stage.sh
#   run (carry .gpu/part2 external/airbench):   source .gpu/part2/device-setup.sh && bash scripts/gpu_bench.sh
# external/airbench (ignored, never committed) holds airbench's own scripts, from a fetched snapshot of
# KellerJordan/cifar10-airbench:
#   mkdir -p external/airbench && g=/work/.mirror/KellerJordan+cifar10-airbench/repo
#   git --git-dir=$g show HEAD:legacy/airbench94.py > external/airbench/airbench94.py
#   git --git-dir=$g show HEAD:airbench94_muon.py > external/airbench/airbench94_muon.py
#   git --git-dir=$g show HEAD:airbench96_faster.py > external/airbench/airbench96_faster.py
# and external/hiverge holds hiverge's record at its commit 06c6072 (2025-10-17; the hiverge snapshot stops
# at 5cd49b1, the fork ljbuturovic/cifar10-speedrun has it):
#   mkdir -p external/hiverge && git --git-dir=/work/.mirror/ljbuturovic+cifar10-speedrun/repo \
#       show 06c6072:cifar10_speedrun.py > external/hiverge/cifar10_speedrun.py
# Runs, in this order: hlb 94 compiled (preset default: fp16 weights, max-autotune), hlb 94 eager,
# airbench94 (legacy, eager), hlb 94-muon (compiled), airbench94_muon (compiled), hlb 94-record
# (compiled), hiverge's cifar10_speedrun (compiled), hlb 96-faster (compiled), airbench96_faster
# (compiled, max-autotune); RUNS seeds each. HLB_BENCH_STEPS picks some of them (a call lasts 10 minutes
# at most: split the nine over calls, e.g. "hlb94 hlb94-eager airbench94", then "hlb94-muon
# airbench94-muon", then "hlb94-record hiverge", then "hlb96-faster", then "airbench96-faster" with
# HLB_BENCH_RUNS=5, with the same OUT).
# Everything goes under $OUT (default ./gpu-out); the table of all that is there comes last.
# Rehearse on the CPU: HLB_BENCH_PRESET=smoke HLB_BENCH_DEVICE=cpu HLB_BENCH_RUNS=2 bash scripts/gpu_bench.sh
# The record search (issue 33; not run by this script, and not yet on a GPU): least time at 94% around
# 94-record, every trial on 8 paired seeds, the best confirmed on fresh seeds (about 2 s a run, so
# 40 trials x 8 seeds and the confirmation fit in ~15 minutes of runs plus one compile per trial's process):
#   hlb search --preset 94-record --space scripts/spaces/94-record.toml --objective time --target 0.94 \
#       --trials 40 --seeds 8 --max-runs 40 --out $OUT/search-94-record --data-dir "$HLB_DATA_DIR"
set -uo pipefail
OUT=${OUT:-./gpu-out}
PRESET=${HLB_BENCH_PRESET:-94}
DEVICE=${HLB_BENCH_DEVICE:-cuda}
RUNS=${HLB_BENCH_RUNS:-10}
AIRBENCH_RUNS=${HLB_AIRBENCH_RUNS:-$RUNS}
EXTRA=${HLB_BENCH_SET:-}   # e.g. 'train.compile_mode="default"'
STEPS=" ${HLB_BENCH_STEPS:-hlb94 hlb94-eager airbench94 hlb94-muon airbench94-muon hlb94-record hiverge hlb96-faster airbench96-faster} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
mkdir -p "$OUT"
{
  date -u +%FT%TZ
  python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
} | tee "$OUT/env.txt"

sets=(); [ -n "$EXTRA" ] && sets=(--set "$EXTRA")
want hlb94 && hlb bench --preset "$PRESET" --runs "$RUNS" --device "$DEVICE" "${sets[@]}" --out "$OUT/hlb-compiled" 2>&1 | tee "$OUT/hlb-compiled.txt"
want hlb94-eager && hlb bench --preset "$PRESET" --runs "$RUNS" --device "$DEVICE" "${sets[@]}" --set 'train.compile="off"' --out "$OUT/hlb-eager" 2>&1 | tee "$OUT/hlb-eager.txt"
[ "$PRESET" = 94 ] && want hlb94-muon && hlb bench --preset 94-muon --runs "$RUNS" --device "$DEVICE" "${sets[@]}" --out "$OUT/hlb-94-muon" 2>&1 | tee "$OUT/hlb-94-muon.txt"
[ "$PRESET" = 94 ] && want hlb94-record && hlb bench --preset 94-record --runs "$RUNS" --target 0.94 --device "$DEVICE" "${sets[@]}" --out "$OUT/hlb-94-record" 2>&1 | tee "$OUT/hlb-94-record.txt"
[ "$PRESET" = 94 ] && want hlb96-faster && hlb bench --preset 96-faster --runs "$RUNS" --target 0.96 --device "$DEVICE" "${sets[@]}" --out "$OUT/hlb-96-faster" 2>&1 | tee "$OUT/hlb-96-faster.txt"

# airbench side by side, from an ignored folder (never committed), fed the same CIFAR-10
if [ -d external/airbench ] && [ "$DEVICE" = cuda ]; then
  [ -f external/airbench/cifar10/test.pt ] || python -m hlbcli.bench airbench-data external/airbench/cifar10
  if [ -f external/airbench/airbench94.py ] && want airbench94; then
    sed "s/for run in range(25)/for run in range($AIRBENCH_RUNS)/" external/airbench/airbench94.py > external/airbench/run94.py
    (cd external/airbench && timeout 300 python run94.py) > "$OUT/airbench94.txt" 2>&1
  fi
  if [ -f external/airbench/airbench94_muon.py ] && want airbench94-muon; then
    sed "s/for run in range(200)/for run in range($AIRBENCH_RUNS)/" external/airbench/airbench94_muon.py > external/airbench/run_muon.py
    (cd external/airbench && timeout 400 python run_muon.py) > "$OUT/airbench94_muon.txt" 2>&1
  fi
  if [ -f external/airbench/airbench96_faster.py ] && want airbench96-faster; then
    sed "s/for run in range(200)/for run in range($AIRBENCH_RUNS)/" external/airbench/airbench96_faster.py > external/airbench/run96_faster.py
    (cd external/airbench && timeout 550 python run96_faster.py) > "$OUT/airbench96_faster.txt" 2>&1
  fi
fi
# hiverge's record: its own warm-up run on random data, then RUNS timed runs (a 3 s device sleep before each)
if [ -f external/hiverge/cifar10_speedrun.py ] && [ "$DEVICE" = cuda ] && want hiverge; then
  [ -f external/airbench/cifar10/test.pt ] || python -m hlbcli.bench airbench-data external/airbench/cifar10
  ln -sfn ../airbench/cifar10 external/hiverge/cifar10
  sed "s/for run in range(200)/for run in range($AIRBENCH_RUNS)/" external/hiverge/cifar10_speedrun.py > external/hiverge/run_record.py
  (cd external/hiverge && timeout 500 python run_record.py) > "$OUT/hiverge.txt" 2>&1
fi

python - "$OUT" <<'PY'
import json, re, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
print("\n== side by side ==")
print((out / "env.txt").read_text().strip().replace("\n", ", "))
print(f"{'what':28} {'n':>3} {'acc mean':>9} {'acc std':>8} {'time mean':>10} {'median':>8}  untimed")
for name in ("hlb-compiled", "hlb-eager", "hlb-94-muon", "hlb-94-record", "hlb-96-faster"):
    f = out / name / "bench.json"
    if f.exists():
        b = json.loads(f.read_text())
        print(f"{name:28} {b['n']:>3} {100*b['accuracy_mean']:9.2f} {100*b['accuracy_std']:8.2f} {b['time_mean']:10.3f} "
              f"{b['time_median']:8.3f}  compile+warm-up {b['warmup_seconds'] or 0:.1f} s")
for name in ("airbench94", "airbench94_muon", "hiverge", "airbench96_faster"):
    f = out / f"{name}.txt"
    if not f.exists():
        continue
    rows = [l for l in f.read_text().splitlines() if re.match(r"\|[^|]*\|\s+eval\s+\|", l)]
    vals = [[c.strip() for c in l.strip("|").split("|")] for l in rows]
    accs = [float(v[-2]) for v in vals]
    times = [float(v[-1]) for v in vals]
    if len(times) > 1:  # the first run of a process is a cold start (cuDNN autotuning)
        accs, times = accs[1:], times[1:]
    if times:
        print(f"{name + ' (runs 2..n)':28} {len(times):>3} {100*statistics.fmean(accs):9.2f} "
              f"{100*(statistics.stdev(accs) if len(accs) > 1 else 0):8.2f} {statistics.fmean(times):10.3f} {statistics.median(times):8.3f}")
PY
