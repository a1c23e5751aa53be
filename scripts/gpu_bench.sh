#!/usr/bin/env bash
# The GPU benchmark of issue 6, as one call on the lent machine (see ../shared/gpu/README.md):
#   bash ../shared/gpu/prepare.sh
#   run (carry .gpu/part1): nvidia-smi -L
#   run (carry .gpu/part2 external/airbench): source .gpu/part2/device-setup.sh && bash scripts/gpu_bench.sh
# external/airbench (ignored, never committed) holds airbench's own scripts, taken from a fetched
# snapshot of KellerJordan/cifar10-airbench, e.g.:
#   mkdir -p external/airbench && g=/work/.mirror/KellerJordan+cifar10-airbench/repo
#   git --git-dir=$g show HEAD:legacy/airbench94.py > external/airbench/airbench94.py
#   git --git-dir=$g show HEAD:airbench94_muon.py > external/airbench/airbench94_muon.py
# Writes everything under $OUT (default ./gpu-out) and prints a short table last.
# Rehearse on the CPU: HLB_BENCH_PRESET=smoke HLB_BENCH_DEVICE=cpu HLB_BENCH_RUNS=2 bash scripts/gpu_bench.sh
set -uo pipefail
OUT=${OUT:-./gpu-out}
PRESET=${HLB_BENCH_PRESET:-94}
DEVICE=${HLB_BENCH_DEVICE:-cuda}
RUNS=${HLB_BENCH_RUNS:-10}
V07_RUNS=${HLB_BENCH_V07_RUNS:-3}
AIRBENCH_RUNS=${HLB_AIRBENCH_RUNS:-10}
mkdir -p "$OUT"
{
  date -u +%FT%TZ
  python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
} | tee "$OUT/env.txt"

hlb bench --preset "$PRESET" --runs "$RUNS" --device "$DEVICE" --out "$OUT/hlb-$PRESET" 2>&1 | tee "$OUT/hlb-$PRESET.txt"

# airbench side by side, from an ignored folder (never committed), fed the same CIFAR-10
if [ -d external/airbench ] && [ "$DEVICE" = cuda ]; then
  python -m hlbcli.bench airbench-data external/airbench/cifar10
  # airbench94.py: the same recipe as our 94, uncompiled (25 runs in its main, cut to N)
  if [ -f external/airbench/airbench94.py ]; then
    sed "s/for run in range(25)/for run in range($AIRBENCH_RUNS)/" external/airbench/airbench94.py > external/airbench/run94.py
    (cd external/airbench && timeout 300 python run94.py) 2>&1 | tail -n 30 | tee "$OUT/airbench94.txt"
  fi
  if [ -f external/airbench/airbench94_muon.py ] && [ -n "${HLB_AIRBENCH_MUON:-}" ]; then
    sed "s/for run in range(200)/for run in range($AIRBENCH_RUNS)/" external/airbench/airbench94_muon.py > external/airbench/run_muon.py
    (cd external/airbench && timeout 400 python run_muon.py) 2>&1 | tail -n 30 | tee "$OUT/airbench94_muon.txt"
  fi
fi

if [ "$PRESET" = 94 ]; then
  hlb bench --preset hlb-v0.7 --runs "$V07_RUNS" --device "$DEVICE" --out "$OUT/hlb-v0.7" 2>&1 | tee "$OUT/hlb-v0.7.txt"
fi
echo; echo "== summary =="; cat "$OUT"/hlb-*.txt | grep -E "^bench|accuracy|time \(s\)"; grep -H -E "Mean" "$OUT"/airbench94*.txt 2>/dev/null || true
