#!/usr/bin/env bash
# The H200 measurements the open issues ask for, grouped into device calls that each fit the device
# tool's limits (10 minutes, 8 files back): OUT/<step>.tgz per step, its log inside.
#
#   bash scripts/gpu_h200.sh OUT forward     # issue 14: verify suite (every rung of every kind),
#                                            #   flash1/flash2 at the seed config vs the old default
#   bash scripts/gpu_h200.sh OUT backward    # issue 15: flash2_mma_bwd checks + timing vs SDPA,
#                                            #   the seed-training suite (tensor-core pair)
#   bash scripts/gpu_h200.sh OUT decode      # issue 16: paged_decode checks, bandwidth sweep vs
#                                            #   SDPA, the seed-inference suite, serving capacity
#                                            #   and tokens/s (scripts/gpu_serving.py)
#   bash scripts/gpu_h200.sh OUT serving     # issue 16: concurrent sequences that fit (contiguous vs
#                                            #   paged) and tokens/s at each concurrency vs SDPA
#   bash scripts/gpu_h200.sh OUT hopper      # issue 20: flash3's probes, verify, timings
#   bash scripts/gpu_h200.sh OUT hopper_fp8  # issue 20: flash3 FP8 probes, verify, timing vs fp16
#   bash scripts/gpu_h200.sh OUT course      # issues 17/18/19: notebooks live, the grader on a GPU,
#                                            #   the torch operators' GPU tests, the GPU test suite
#   bash scripts/gpu_h200.sh OUT torch       # issue 19: torch-integration.{json,png} (opcheck, stream,
#                                            #   graph, overhead vs SDPA, torch.compile training)
#
# Start each device command with the numpy-2.4 wheel install (../shared/device-wheels.sh) and pass
# carry: [".whl"]. Unpack the tgz files into figures/h200/ (the JSON files carry their provenance).
set -u
OUT=${1:?usage: gpu_h200.sh OUT forward|backward|decode|serving|course|torch|hopper|hopper_fp8}
mkdir -p "$OUT"
. "$(dirname "$0")/gpu_steps.sh"
case "${2:?which group}" in
  forward)
    step verify 300 python3 -m workbench.compare --suite verify --out "$OUT/verify" --no-plots
    step flash12 240 python3 scripts/gpu_flash12.py "$OUT/flash12"
    ;;
  backward)
    step mma_bwd 240 python3 scripts/gpu_mma_bwd.py "$OUT/mma_bwd"
    step seed_training 300 python3 -m workbench.compare --suite seed-training --out "$OUT/seed_training"
    ;;
  decode)
    step decode 300 python3 scripts/gpu_decode.py "$OUT/decode" --sweep
    step seed_inference 240 python3 -m workbench.compare --suite seed-inference --out "$OUT/seed_inference"
    ;;
  serving)
    step serving 300 python3 scripts/gpu_serving.py "$OUT/serving"
    ;;
  course)
    step torch_ops 120 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_torch_ops.py
    step notebooks 200 python3 scripts/run_notebooks.py "$OUT/notebooks"
    step assignments 150 python3 scripts/gpu_assignments.py "$OUT/assignments" online-softmax
    step gpu_tests 120 env NUMBA_ENABLE_CUDASIM=0 python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests
    ;;
  hopper)
    step flash3_probe 150 python3 scripts/gpu_flash3.py "$OUT/flash3" probe
    step flash3_verify 300 python3 scripts/gpu_flash3.py "$OUT/flash3" verify
    step flash3_time 120 python3 scripts/gpu_flash3.py "$OUT/flash3" time
    ;;
  hopper_fp8)
    step flash3_fp8 300 python3 scripts/gpu_flash3.py "$OUT/flash3" fp8
    ;;
  torch)
    step torch_integration 420 python3 -m workbench.bench.torch_integration "$OUT/torch_integration"
    ;;
  *) echo "unknown group $2" >&2; exit 2 ;;
esac
