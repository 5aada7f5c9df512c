#!/usr/bin/env bash
# The GPU benchmarks of the issue "Throughput", in one command, each under its own time limit so that one slow or
# failing benchmark leaves the others' tables (all limits together exceed the device tool's 600 s per command:
# what matters most runs first).
#
#     bash bench/gpu.sh [N] [OUTDIR]      # N synthetic 500×375 JPEGs for the pipeline runs (default 10000)
#
# Where the machine lacks this project's dependencies, pack them here with `python bench/device_deps.py --have
# LIST --out .whl/site.tar.xz`, unpack them there and put them on PYTHONPATH; `mapcap` itself must be importable
# (`python3 -m pip install --no-deps --no-build-isolation --target DIR .`).
set -uo pipefail
N="${1:-10000}"
OUT="${2:-bench-gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PREFECT_HOME="${PREFECT_HOME:-$(mktemp -d)}" PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=180
cd "$(dirname "$0")/.."
step() {  # step SECONDS NAME COMMAND...: run, keep its output in OUT/NAME.txt, go on whatever happens
  local limit="$1" name="$2"; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "=== $name: exit $? after $((SECONDS - t0)) s"
  grep -v "^WARNING\|| INFO \|^[0-9:. ]*| INFO" "$OUT/$name.txt" | tail -n 25
}
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
data="$(mktemp -d)/jpegs"
# the whole-pipeline runs first (their targets are the ones not yet met on a GPU), the stage benchmarks after
python3 bench/pipeline.py --n "$N" --write-only "$data" >"$OUT/data.txt" 2>&1
echo "=== $(find "$data" -name '*.jpg' | wc -l) JPEGs in $data"
step 200 pipeline python3 bench/pipeline.py --folder "$data" --model ViT-B-16 \
  --stages classify relevancy regions captions --compare
step 90 pipeline-classify python3 bench/pipeline.py --folder "$data" --model ViT-B-16 --stages classify --compare
# where the plain loop's time goes (its shards one at a time under cProfile; no Prefect comparison)
step 200 pipeline-profile python3 bench/pipeline.py --folder "$data" --model ViT-B-16 \
  --profile "$OUT/pipeline-profile.txt" --stages classify relevancy regions captions
step 240 pipeline-compile python3 bench/pipeline.py --folder "$data" --model ViT-B-16 --compile \
  --stages classify relevancy regions captions --compare
step 60 relevancy python3 bench/relevancy.py --models ViT-B-16 --methods chefer --batch 128 --n 1024 --n-single 16 \
  --start-layer 0 -1 --precision bf16
step 60 captions python3 bench/captions.py --sizes gpt2-small --batch 64 512 --n 1024 --n-single 16 --beams 1
step 60 classify python3 bench/classify.py --models ViT-B-16 --precision bf16 --batch 512 --iters 10 --n 512
step 60 text python3 bench/text.py --models ViT-B-16 --classes 100 --precision fp32 bf16
step 120 classify-compile python3 bench/classify.py --models ViT-B-16 --precision bf16 --batch 512 --iters 10 --n 512 \
  --compile
