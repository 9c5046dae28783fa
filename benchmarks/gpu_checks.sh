#!/usr/bin/env bash
# The GPU checks of the README's "Training on GPUs" and "Benchmarks" sections, as one prepared run:
#
#   bash benchmarks/gpu_checks.sh OUT_DIR
#
# 1. the CUDA cases of the tests: sync-free training steps (torch.cuda.set_sync_debug_mode), CPU/CUDA
#    parity of the priors and the steps, resident batches, deterministic resume, sync-free sampling;
# 2. bench_priors.py on CUDA against its in-run baseline (log_prob forward, forward+backward, sampling);
# 3. bench_step.py with the paper profiles' networks: ms/step, peak memory and run hours of each model
#    with N(0, I) and learnable TRIP, float32 and bf16.
# Everything prints, and OUT_DIR gets log.txt and one JSON per benchmark. Needs only torch, numpy,
# scipy, pytest, hypothesis, PyYAML, tqdm and pytorch-fid: not the pipeline packages.
set -u
out=${1:-gpu_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
log() { tee -a "$out/log.txt"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | log
timeout 240 $py -m pytest -p no:cacheprovider -q -rs --maxfail=10 tests/test_gpu_path.py \
    tests/priors/test_ring_fast_paths.py "tests/priors/test_trip_prior.py::test_dtype_and_device_conversion" 2>&1 \
    | grep -v "^\.*\s*\[" | tail -40 | log
timeout 150 $py benchmarks/bench_priors.py --device cuda --repeats 7 --json "$out/bench_priors_cuda.json" 2>&1 | log
for amp in none bf16; do
  timeout 150 $py benchmarks/bench_step.py --device cuda --profile configs/celeba64.yaml --models vae wgan wgan_gp \
      --blocks 5 --steps 5 --set train.amp=$amp --json "$out/step_celeba64_$amp.json" 2>&1 | log
done
timeout 120 $py benchmarks/bench_step.py --device cuda --profile configs/cifar10.yaml --models vae wgan wgan_gp \
    --blocks 5 --steps 5 --json "$out/step_cifar10_none.json" 2>&1 | log
