#!/usr/bin/env bash
# One command for a session that has a GPU: run the chosen stages and leave every result
# (logs, CSVs, plots) in one folder, packed as one archive, so a short lease is spent on
# measuring, not on typing. Stages (in the order given):
#   env       nvidia-smi, torch/triton versions
#   tests     the GPU-marked tests (real kernels, every dtype and every autotune config)
#   aot       the ahead-of-time build check (sm_80/sm_90, no spills)
#   sweep90   benchmarks/sweep.py at 90% sparsity: every shape, batch, dtype, mode (the targets)
#   sweep     the full sweep grid (long: several minutes)
#   llm       benchmarks/sweep.py --llm: Llama-3-8B MLP shapes (4096->14336, 14336->4096), batch 1-16
#   topk      benchmarks/bench_gradient_topk.py (fused kernel vs dense matmul + topk)
#   train     benchmarks/bench_train_step.py (ResNet-18 step time and peak memory)
#   ncu       Nsight Compute summary of the forward kernel at batch 1 and 256 (3072->768, 90%)
# Usage: bash benchmarks/gpu_session.sh [OUTDIR] STAGE...   (OUTDIR defaults to $OUT or gpu_run)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_run}"
if [ $# -gt 0 ] && [[ "$1" != env && "$1" != tests && "$1" != aot && "$1" != sweep* && "$1" != llm && "$1" != topk && "$1" != train && "$1" != ncu ]]; then
  out="$1"; shift
fi
stages=("$@"); [ ${#stages[@]} -gt 0 ] || stages=(env tests sweep90 topk)
mkdir -p "$out/results" "$out/plots"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET TRITONSPARSE_BACKEND
log() { echo "[gpu_session $(date +%H:%M:%S)] $*"; }

for stage in "${stages[@]}"; do
  log "stage $stage"
  case "$stage" in
    env) { nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee "$out/env.txt" ;;
    tests) python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.log" ;;
    aot) python3 -m tritonsparse._aot --jobs 8 2>&1 | tee "$out/aot.log" ;;
    sweep90) python3 benchmarks/sweep.py --sparsities 0.9 --out-dir "$out/results" --plot-dir "$out/plots" --tag s90 2>&1 | tee "$out/sweep90.log" ;;
    sweep) python3 benchmarks/sweep.py --out-dir "$out/results" --plot-dir "$out/plots" --tag full 2>&1 | tee "$out/sweep.log" ;;
    llm) python3 benchmarks/sweep.py --llm --out-dir "$out/results" --plot-dir "$out/plots" 2>&1 | tee "$out/llm.log" ;;
    topk) python3 benchmarks/bench_gradient_topk.py --out-dir "$out/results" 2>&1 | tee "$out/topk.log" ;;
    train) python3 benchmarks/bench_train_step.py --out "$out/results" 2>&1 | tee "$out/train.log" ;;
    ncu) ncu --kernel-name regex:_condensed_fwd_kernel --launch-skip 30 --launch-count 2 --section SpeedOfLight --section MemoryWorkloadAnalysis \
           python3 -c "
import torch, tritonsparse
idx = torch.stack([torch.randperm(3072)[:307] for _ in range(768)]).to(torch.int16).cuda()
for dt in (torch.float32,):
    v = torch.randn(768, 307, device='cuda', dtype=dt)
    for b in (1, 256):
        x = torch.randn(b, 3072, device='cuda', dtype=dt)
        for _ in range(16): tritonsparse.condensed_matmul(x, v, idx)
torch.cuda.synchronize()" 2>&1 | tee "$out/ncu.txt" ;;
    *) log "unknown stage $stage" ;;
  esac
done
tmp=$(mktemp /tmp/gpu_session.XXXXXX.tar.gz)
tar -czf "$tmp" -C "$out" --exclude gpu_session.tar.gz . && mv "$tmp" "$out/gpu_session.tar.gz" && log "packed $out/gpu_session.tar.gz"
