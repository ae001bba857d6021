#!/usr/bin/env bash
# Every GPU check of the project in one run (a lent GPU machine has minutes, not hours):
#   bash benchmarks/gpu_check.sh OUTDIR
# 1. tests/test_gpu.py: each device path equals the CPU's result on the same data;
# 2. benchmarks/gpu.py --quick: Sinkhorn and assignment beside GeomLoss and POT on the GPU;
# 3. the streamed auction on unrelated clouds at n = 20,000 and 50,000 (d = 128) on the GPU;
# 4. otcollapse run --model resnet18 --data shapes32 --quick --device cuda, end to end;
# 5. benchmarks/paper_scale.py --device cuda (analyze, 10,000 samples, 9 layers, d = 512).
# Logs and results land in OUTDIR. Needs otcollapse importable (PYTHONPATH=.) with its deps.
# SKIP="resnet18 paper" leaves steps out (names: tests streamed gpu resnet18 paper).
set -u
SKIP=${SKIP:-}
out=${1:?usage: gpu_check.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
step() {
    for s in $SKIP; do [ "$s" = "$2" ] && { echo "=== $1: skipped"; return 1; }; done
    echo "=== $1 ($(date +%T))"
}
step "device" device && python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
step "tests" tests && timeout 150 python3 -m pytest tests/test_gpu.py -q -p no:cacheprovider \
    -W ignore::pytest.PytestUnraisableExceptionWarning 2>&1 | tail -15
step "streamed auction" streamed && timeout 150 python3 - <<'PY' 2>&1 | tee "$out/streamed.txt"
import time, numpy as np, torch
from otcollapse import wasserstein
for n in (20000, 50000):
    g = np.random.default_rng(1)
    x = torch.tensor(g.normal(size=(n, 128)), dtype=torch.float32, device="cuda")
    y = torch.tensor(g.normal(size=(n, 128)) + 0.3, dtype=torch.float32, device="cuda")
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter(); r = wasserstein(x, y); torch.cuda.synchronize()
    s = time.perf_counter() - t
    print(n, r.params.get("path"), f"{s:.1f} s", r.cost, r.gap, r.converged,
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB",
          {k: round(v, 2) for k, v in r.params.get("stage_seconds", {}).items()})
PY
step "gpu.py --quick" gpu && timeout 150 python3 benchmarks/gpu.py --quick --results "$out" 2>&1 | tail -25
step "resnet18 quick on cuda" resnet18 && time timeout 240 python3 -c "import sys; from otcollapse.cli import main; sys.exit(main(sys.argv[1:]))" \
    run --model resnet18 --data shapes32 --quick --device cuda --out /tmp/resnet18 2>&1 | tail -15
cp /tmp/resnet18/metrics.json "$out/resnet18_cuda_metrics.json" 2>/dev/null
step "paper scale analyze on cuda" paper && timeout 120 python3 benchmarks/paper_scale.py --device cuda 2>&1 | tail -12
cp benchmarks/results/paper_scale_cuda.* "$out"/ 2>/dev/null
step "done" done
