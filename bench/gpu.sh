#!/usr/bin/env bash
# Everything that needs a GPU: build the extension, run the GPU tests, then the benchmarks.
#
#   bash bench/gpu.sh [all|tests|kernels|hostfree|train|train-qlora|train-hybrid|train-fsdp|epoch|generate]
#
# With network and `pip install -e ".[dev,flash,fla]" trl datasets` done, that is all. Results and
# logs go to bench/results (tarred into $OUT/results.tgz when $OUT is set: the device tool's
# output folder, which brings back at most 8 files).
#
# The device tool's GPU machine has no network, and one call carries at most 64 MiB, so the
# missing packages travel as wheels over several back-to-back calls (a warm machine keeps /tmp):
#   here, once:  bash ../shared/tools/device-wheels.sh && bash ../shared/tools/device-fa4.sh
#                bash bench/gpu.sh --prepare      # data, tools, tokenizer, epoch traces -> .device/
#   call 1 (carry .fa4-1 .whl .device):  bash bench/gpu.sh stash
#   call 2 (carry .fa4-2 .whl-bnb):      bash bench/gpu.sh stash tests train
#   call 3:                              bash bench/gpu.sh kernels train-qlora epoch
# `stash` copies whatever wheel folders came with the call to /tmp/cd_fast-wheels; every stage
# installs what is stashed (once) and builds the extension (once).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
  # Split the wheels: bitsandbytes alone (43 MB) travels in its own call.
  mkdir -p .whl-bnb
  grep -qx '/.whl-bnb/' .git/info/exclude 2>/dev/null || echo '/.whl-bnb/' >> .git/info/exclude
  if compgen -G ".whl/bitsandbytes-*.whl" > /dev/null; then mv .whl/bitsandbytes-*.whl .whl-bnb/; fi
  # Keep only the device's CUDA 13.0 library (129 MB of CUDA/ROCm builds otherwise).
  python3 - .whl-bnb/bitsandbytes-*.whl <<'PY'
import re, sys, zipfile

path = sys.argv[1]
with zipfile.ZipFile(path) as wheel:
    items = [(i, wheel.read(i)) for i in wheel.infolist()]
drop = re.compile(r"libbitsandbytes_(cuda(?!130)|rocm)\w*\.so")
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
    for info, data in items:
        if drop.search(info.filename):
            continue
        if info.filename.endswith("RECORD"):
            data = b"\n".join(x for x in data.split(b"\n") if not drop.search(x.decode()))
        wheel.writestr(info, data)
PY
  # flash-linear-attention (pure Python + Triton) for the hybrid Qwen3.5 rows
  for p in fla-core==0.6.0 flash-linear-attention==0.6.0 einops==0.8.2; do
    python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "$p"
  done
  rm -rf .device && mkdir -p .device/epoch
  cp -r ../shared/data .device/data && cp -r ../shared/tools .device/tools
  commit=$(git rev-parse --short HEAD)
  [ -z "$(git status --porcelain --untracked-files=no)" ] || commit="$commit-dirty"
  echo "$commit" > .device/commit
  # One epoch on original vs compressed real traces (bench train --epoch): the records, their
  # head-truncation to 30 % (no model needed), and SmolLM2's tokenizer for a random student.
  python3 - <<'PY'
from transformers import AutoTokenizer

from cd_fast.data import TraceReader, write_jsonl
from cd_fast.models import fetch_smollm2

data = ".device/data/qwen3-8b-thinking/"
reader = TraceReader(data + "qwen3-8b__think-on.jsonl", prompts=data + "items.json")
write_jsonl(".device/epoch/original.jsonl", list(reader))
path = fetch_smollm2()
AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(".device/tokenizer")
PY
  cdfast compress .device/epoch/original.jsonl -o .device/epoch/compressed.jsonl \
    --method truncate --budget 0.3 --tokenizer .device/tokenizer
  du -sh .device .whl .whl-bnb .fa4-1 .fa4-2 2>/dev/null || true
  exit 0
fi

wheels=/tmp/cd_fast-wheels
site=/tmp/site
results=bench/results
mkdir -p "$results" "$wheels" "$site"
# .device travels once (call 1); later calls find the copy in /tmp.
if [ -d .device ]; then rm -rf /tmp/cd_fast-device && cp -r .device /tmp/cd_fast-device; fi
device=/tmp/cd_fast-device
[ -d "$device" ] || device=.device
data=$device/data
[ -d "$data" ] || data=../shared/data
tools=$device/tools
[ -d "$tools" ] || tools=../shared/tools
[ -f "$device/commit" ] && export CD_FAST_COMMIT=$(cat "$device/commit")
export CD_FAST_SHARED_DATA=$data
export PYTHONUNBUFFERED=1
export PYTHONPATH=$site:$site/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}

stash() {
  for d in .whl .whl-bnb .fa4-1 .fa4-2; do
    if [ -d "$d" ]; then cp "$d"/* "$wheels"/; fi
  done
  local whole="$wheels/nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl"
  if [ -f "$wheels/part_aa" ] && [ -f "$wheels/part_ab" ] && [ ! -f "$whole" ]; then
    cat "$wheels/part_aa" "$wheels/part_ab" > "$whole" && rm "$wheels/part_aa" "$wheels/part_ab"
  fi
  ls "$wheels"
}

setup() {
  local new=()
  for w in "$wheels"/*.whl; do
    [ -e "$w" ] || continue
    grep -qxF "$(basename "$w")" "$site/.installed" 2>/dev/null || new+=("$w")
  done
  if [ ${#new[@]} -gt 0 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "${new[@]}"
    for w in "${new[@]}"; do basename "$w" >> "$site/.installed"; done
  fi
  if [ ! -f /tmp/cd_fast-built ]; then
    python3 -m pip install -q --no-build-isolation --no-deps -e . && touch /tmp/cd_fast-built
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 - <<'PY'
import importlib
for name in ("torch", "triton", "transformers", "peft", "liger_kernel", "bitsandbytes", "trl",
             "flash_attn.cute", "cutlass", "fla"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '')}")
    except Exception as error:  # report, the stages skip what is missing
        print(f"  {name}: {type(error).__name__}: {str(error)[:100]}")
PY
}

collect() {
  if [ -n "${OUT:-}" ]; then tar czf "$OUT/results.tgz" "$results"; fi
}
trap collect EXIT

[ $# -gt 0 ] || set -- all
for stage in "$@"; do
  case $stage in
    stash) stash ;;
    tests)
      setup
      set +e
      python3 -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tee "$results/gpu-tests.log"
      set -e ;;
    kernels)
      setup
      python3 -m bench --results-dir "$results" token_scores --end-to-end
      python3 -m bench --results-dir "$results" attention
      python3 -m bench --results-dir "$results" pack --step-model ;;
    hostfree)
      # the host-free work (issue 29) against the defaults it replaced, in one call (~5 min):
      # the fused loss (cd_fast's vs Liger's at chunk_mem_const 1 and 16), the 0.5B/1.5B steps
      # without static shapes, on Liger's loss, static, compiled and as CUDA graphs, QLoRA with
      # bf16 adapters, the no-sync and CUDA-graph tests (sync mode "error"), `score` end to end
      setup
      set +e
      python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_linear_cross_entropy.py \
        tests/test_train.py -k "sync or backends or cuda_graph" 2>&1 | tee "$results/gpu-hostfree-tests.log"
      set -e
      python3 -m bench --results-dir "$results" loss --hidden 896 1536
      python3 -m bench --results-dir "$results" train --no-trl --steps 8 \
        --runs 0.5b-full-1500 1.5b-full-1500 --variants dynamic liger-loss bf16 compile graphs
      python3 -m bench --results-dir "$results" train --no-trl --steps 8 --runs 1.5b-qlora-1500
      python3 -m bench --results-dir "$results" --data-dir "$data" score --records 48 \
        --tokenizer "$device/tokenizer" ;;
    train)
      setup
      python3 -m bench --results-dir "$results" train --tools-dir "$tools" --profile \
        --runs 0.5b-full-1500 1.5b-full-1500 --variants bf16 ;;
    train-qlora)
      setup
      python3 -m bench --results-dir "$results" train --tools-dir "$tools" --profile \
        --runs 8b-qlora-1500 ;;
    train-hybrid)
      setup
      python3 -m bench --results-dir "$results" train --profile \
        --runs qwen3.5-0.8b-full-1500 --variants bf16 ;;
    train-fsdp)
      setup
      gpus=$(nvidia-smi -L | wc -l)
      if [ "$gpus" -lt 2 ]; then
        echo "train-fsdp: needs a machine with several GPUs, this one has $gpus: skipped"
      else
        python3 -m torch.distributed.run --standalone --nproc-per-node "$gpus" -m bench \
          --results-dir "$results" train --no-trl --distributed fsdp \
          --runs 1.5b-full-1500 --variants master
      fi ;;
    epoch)
      setup
      python3 -m bench --results-dir "$results" train --runs --no-trl \
        --epoch "$device/epoch/original.jsonl" "$device/epoch/compressed.jsonl" \
        --epoch-model "$device/tokenizer" ;;
    generate)
      # output tokens/s of vLLM (when installed: the device has none, and no network) against
      # the transformers backend, 100 MATH-500 questions, a random Qwen2.5-0.5B shape
      setup
      python3 -m bench --results-dir "$results" generate --backends vllm transformers \
        --dataset math500 --questions 100 --max-new-tokens 512 --batch-size 100 \
        --random-shape qwen2.5-0.5b --tokenizer "$device/tokenizer" ;;
    all)
      "$0" tests kernels hostfree train train-qlora train-hybrid train-fsdp epoch generate ;;
    *) echo "unknown stage $stage (expected stash, tests, kernels, hostfree, train, train-qlora, train-hybrid, train-fsdp, epoch, generate, all)" >&2
       exit 2 ;;
  esac
done
