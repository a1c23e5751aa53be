#!/usr/bin/env bash
# The GPU side by side (issue 9 item 7, issue 11 item 5), as one call on the lent machine:
#   bash ../shared/gpu/prepare.sh
#   run (carry .gpu/part1):                     bash .gpu/part1/stage.sh
#   run (carry .gpu/part2 external/airbench):   source .gpu/part2/device-setup.sh && bash scripts/gpu_bench.sh
# external/airbench (ignored, never committed) holds airbench's own scripts, from a fetched snapshot of
# KellerJordan/cifar10-airbench:
#   mkdir -p external/airbench && g=/work/.mirror/KellerJordan+cifar10-airbench/repo
#   git --git-dir=$g show HEAD:legacy/airbench94.py > external/airbench/airbench94.py
#   git --git-dir=$g show HEAD:legacy/airbench96.py > external/airbench/airbench96.py
#   git --git-dir=$g show HEAD:airbench94_muon.py > external/airbench/airbench94_muon.py
#   git --git-dir=$g show HEAD:airbench96_faster.py > external/airbench/airbench96_faster.py
# and external/hiverge holds hiverge's record at its commit 06c6072 (2025-10-17; the hiverge snapshot stops
# at 5cd49b1, the fork ljbuturovic/cifar10-speedrun has it):
#   mkdir -p external/hiverge && git --git-dir=/work/.mirror/ljbuturovic+cifar10-speedrun/repo \
#       show 06c6072:cifar10_speedrun.py > external/hiverge/cifar10_speedrun.py
# (scripts/cpu_side_by_side.py --recipe hlb-v0.7, CPU only, reads tysam-code's main.py at v0.7.0 from
# external/hlb-CIFAR10: mkdir -p external/hlb-CIFAR10 && git --git-dir=/work/.mirror/tysam-code+hlb-CIFAR10/repo
#   show ad103b4:main.py > external/hlb-CIFAR10/main.py)
# One call (issue 35, item 6; at most ~9 minutes), in this order, everything under $OUT:
#   fingerprint   the machine (hlbcli.machine.fingerprint) -> $OUT/machine.json
#   alternate94   hlb PRESET against airbench94 in blocks of BLOCK runs, A B B A (2 x BLOCK runs each side)
#   record        hlb 94-record (PRESET when rehearsing) against hiverge's cifar10_speedrun, BLOCK runs each
#   profile94     hlb profile of PRESET: kernels, phases, traces -> $OUT/profile-PRESET
# More steps, by name in HLB_BENCH_STEPS (the older nine): hlb94 hlb94-eager airbench94 hlb94-muon
# airbench94-muon hlb94-record hiverge hlb96-faster airbench96-faster (RUNS seeds each); and
# hlb94-record-fp16-all, 94-record with batchnorm in fp16 as hiverge runs it (train.precision fp16-all: what
# the preset's first listed deviation costs or saves, against hlb94-record).
# Each step has its own time limit, so one that overruns leaves the rest; the table of all that is
# under $OUT comes last. The external scripts need CUDA: on the CPU their steps say so and skip.
# Rehearse on the CPU (tests/test_gpu_bench.py does, in the suite):
#   OUT=/tmp/gpu-rehearsal HLB_BENCH_PRESET=smoke HLB_BENCH_DEVICE=cpu HLB_BENCH_BLOCK=1 bash scripts/gpu_bench.sh
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
BLOCK=${HLB_BENCH_BLOCK:-3}
AIRBENCH_RUNS=${HLB_AIRBENCH_RUNS:-$RUNS}
EXTRA=${HLB_BENCH_SET:-}   # e.g. 'train.compile_mode="default"'
STEPS=" ${HLB_BENCH_STEPS:-fingerprint alternate94 record profile94} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
say() { echo "== $*" | tee -a "$OUT/steps.txt"; }
mkdir -p "$OUT"
{
  date -u +%FT%TZ
  python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
} | tee "$OUT/env.txt"

sets=(); [ -n "$EXTRA" ] && sets=(--set "$EXTRA")
[ -f external/airbench/cifar10/test.pt ] || { [ "$DEVICE" = cuda ] && [ -d external/airbench ] && python -m hlbcli.bench airbench-data external/airbench/cifar10; }

# an external script's block: its own loop cut to N runs (+1: its first run is a cold start, left out of the table)
external() {  # external NAME DIR SCRIPT LOOP N LIMIT
  local name=$1 dir=$2 script=$3 loop=$4 n=$5 limit=$6
  if [ "$DEVICE" != cuda ]; then say "$name: skipped (the original script needs CUDA)"; return; fi
  if [ ! -f "$dir/$script" ]; then say "$name: skipped ($dir/$script is absent: see this script's header)"; return; fi
  sed "s/for run in range($loop)/for run in range($n)/" "$dir/$script" > "$dir/run_$script"
  say "$name: $n runs ($dir/$script)"
  (cd "$dir" && timeout "$limit" python "run_$script") >> "$OUT/$name.txt" 2>&1 || say "$name: exit $?"
}
hlb_block() {  # hlb_block NAME LIMIT ARGS...: hlb bench into $OUT/NAME
  local name=$1 limit=$2; shift 2
  say "$name: hlb bench $*"
  timeout "$limit" hlb bench "$@" --device "$DEVICE" "${sets[@]}" --out "$OUT/$name" > "$OUT/$name.txt" 2>&1 || say "$name: exit $?"
}

if want fingerprint; then
  say "fingerprint"
  python -c "import json, sys; from hlbcli.machine import fingerprint; json.dump(fingerprint(sys.argv[1]), sys.stdout, indent=1)" \
    "$([ "$DEVICE" = cuda ] && echo cuda || echo cpu)" > "$OUT/machine.json" && cat "$OUT/machine.json"
fi
if want alternate94; then  # A B B A: hlb, airbench94, airbench94, hlb
  hlb_block alt-hlb-1 170 --preset "$PRESET" --runs "$BLOCK" --seed 0
  external airbench94-alt-1 external/airbench airbench94.py 25 $((BLOCK + 1)) 120
  external airbench94-alt-2 external/airbench airbench94.py 25 $((BLOCK + 1)) 120
  hlb_block alt-hlb-2 170 --preset "$PRESET" --runs "$BLOCK" --seed "$BLOCK"
fi
if want record; then
  rec=$([ "$PRESET" = 94 ] && echo 94-record || echo "$PRESET")
  hlb_block record-hlb 240 --preset "$rec" --runs "$BLOCK" --target 0.94
  [ -d external/hiverge ] && ln -sfn ../airbench/cifar10 external/hiverge/cifar10
  external hiverge-record external/hiverge cifar10_speedrun.py 200 "$((BLOCK + 1))" 300
fi
if want profile94; then
  say "profile: hlb profile --preset $PRESET"
  timeout 120 hlb profile --preset "$PRESET" --steps 20 --skip 5 --device "$DEVICE" "${sets[@]}" --out "$OUT/profile-$PRESET" \
    > "$OUT/profile-$PRESET.txt" 2>&1 || say "profile: exit $?"
fi

# the older steps, each when named in HLB_BENCH_STEPS
want hlb94 && hlb_block hlb-compiled 300 --preset "$PRESET" --runs "$RUNS"
want hlb94-eager && hlb_block hlb-eager 300 --preset "$PRESET" --runs "$RUNS" --set 'train.compile="off"'
want airbench94 && external airbench94 external/airbench airbench94.py 25 "$AIRBENCH_RUNS" 300
want hlb94-muon && hlb_block hlb-94-muon 300 --preset 94-muon --runs "$RUNS"
want airbench94-muon && external airbench94_muon external/airbench airbench94_muon.py 200 "$AIRBENCH_RUNS" 400
want hlb94-record && hlb_block hlb-94-record 300 --preset 94-record --runs "$RUNS" --target 0.94
want hlb94-record-fp16-all && hlb_block hlb-94-record-fp16-all 300 --preset 94-record --runs "$RUNS" --target 0.94 \
  --set 'train.precision="fp16-all"'
want hiverge && external hiverge external/hiverge cifar10_speedrun.py 200 "$AIRBENCH_RUNS" 500
want hlb96-faster && hlb_block hlb-96-faster 500 --preset 96-faster --runs "$RUNS" --target 0.96
want airbench96-faster && external airbench96_faster external/airbench airbench96_faster.py 200 "$AIRBENCH_RUNS" 550

python - "$OUT" <<'PY'
import json, re, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
print("\n== side by side ==")
print((out / "env.txt").read_text().strip().replace("\n", ", "))
print(f"{'what':28} {'n':>3} {'acc mean':>9} {'acc std':>8} {'time mean':>10} {'median':>8}  untimed")
for f in sorted(out.glob("*/bench.json")):
    b = json.loads(f.read_text())
    print(f"{f.parent.name:28} {b['n']:>3} {100*b['accuracy_mean']:9.2f} {100*b['accuracy_std']:8.2f} {b['time_mean']:10.3f} "
          f"{b['time_median']:8.3f}  compile+warm-up {b['warmup_seconds'] or 0:.1f} s")
for f in sorted(out.glob("*.txt")):
    name = f.stem
    rows = [l for l in f.read_text().splitlines() if re.match(r"\|[^|]*\|\s+eval\s+\|", l)]
    vals = [[c.strip() for c in l.strip("|").split("|")] for l in rows]
    accs = [float(v[-2]) for v in vals]
    times = [float(v[-1]) for v in vals]
    if len(times) > 1:  # the first run of a process is a cold start (cuDNN autotuning)
        accs, times = accs[1:], times[1:]
    if times:
        print(f"{name + ' (runs 2..n)':28} {len(times):>3} {100*statistics.fmean(accs):9.2f} "
              f"{100*(statistics.stdev(accs) if len(accs) > 1 else 0):8.2f} {statistics.fmean(times):10.3f} {statistics.median(times):8.3f}")
for f in sorted(out.glob("*/profile.json")):
    p = json.loads(f.read_text())
    for part, d in p["parts"].items():
        total = sum(d["phases"].values()) or 1.0
        print(f"{f.parent.name} {part}: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in d["phases"].items() if v))
PY
