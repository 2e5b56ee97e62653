#!/usr/bin/env bash
# Everything that needs a GPU in one command: build the extension, run the GPU correctness tests,
# then the benchmarks. Results go to $OUT when set (the device tool's output folder), else to
# bench/results.
#
#   here, before a device call:  bash bench/gpu.sh --prepare   (copies ../shared/data to .device/)
#   on the GPU machine:          bash bench/gpu.sh [all|kernels|train]   (device tool: carry
#                                [".device"], plus ".whl" for wheels from
#                                ../shared/tools/device-wheels.sh). One device call runs at most
#                                10 minutes: run "kernels" and "train" as two calls.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p .device && rm -rf .device/data .device/tools
  cp -r ../shared/data .device/data && cp -r ../shared/tools .device/tools
  du -sh .device
  exit 0
fi

results=${OUT:-bench/results}
mkdir -p "$results"
data=.device/data
[ -d "$data" ] || data=../shared/data
tools=.device/tools
[ -d "$tools" ] || tools=../shared/tools
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-build-isolation --no-deps -e .
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

stage=${1:-all}
if [ "$stage" = all ] || [ "$stage" = kernels ]; then
  python3 -m pytest -q -m gpu tests 2>&1 | tee "$results/gpu-tests.log"
  python3 -m bench --results-dir "$results" token_scores --end-to-end
  python3 -m bench --results-dir "$results" attention
  python3 -m bench --results-dir "$results" pack --step-model
  python3 -m bench --results-dir "$results" --data-dir "$data" segment
fi
if [ "$stage" = all ] || [ "$stage" = train ]; then
  # cd_fast vs the TRL anchors (trl + datasets from .whl); the 8B QLoRA run saves a 16 GB copy.
  python3 -m bench --results-dir "$results" train --tools-dir "$tools"
fi
