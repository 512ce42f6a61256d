#!/usr/bin/env bash
# One device session (a lent GPU): the card's bf16 matmul ceiling, the CUDA loader test, the
# side-by-side benchmarks for vgg16 and resnet50 (eager, then compiled), and one CLI epoch on CUDA.
# Run from the repository root with platformdirs carried as a wheel in .whl/ (the image lacks it).
set -uo pipefail
out=${OUT:-/tmp/cifarctl-gpu}; mkdir -p "$out"
if ! python3 -c "import platformdirs" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
python3 - <<'PY'
import torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn_like(a)
for _ in range(3):
    a @ b
times = []
for _ in range(10):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(); a @ b; end.record(); torch.cuda.synchronize()
    times.append(start.elapsed_time(end))
print(f"bf16 matmul 8192^3: {2 * 8192**3 / (sorted(times)[5] / 1e3) / 1e12:.0f} TFLOP/s (median of 10)")
PY
python3 -m pytest -q -p no:cacheprovider tests/test_loader.py 2>&1 | tail -2
for model in vgg16 resnet50; do
  python3 bench/compare.py --model "$model" --device cuda --data fake --train-steps 300 --warmup 30 \
    --eval-images 10000 --json "$out/$model.json"
  python3 bench/compare.py --model "$model" --device cuda --data fake --train-steps 300 --warmup 50 \
    --only train --compile --json "$out/${model}_compile.json"
done
CIFARCTL_HOME=/tmp/cifarctl-home python3 -m cifarctl train resnet50 --data fake --epochs 1 --device cuda --json \
  > "$out/cli_epoch.json" 2> "$out/cli_epoch.err"; tail -c 600 "$out/cli_epoch.json"
