#!/usr/bin/env bash
# The GPU checks in one run, inside 9 minutes on one H100/H200, for a machine lent for a few minutes:
#   1. what the machine is (nvidia-smi, torch, CUDA, compute capability);
#   2. bench_oom.py: a real out-of-memory from CUDA's allocator, recovered (splits, budget, same embeddings);
#   3. bench_inference.py --device cuda, full-size random-weight DNABERT-2, then LucaOne: seqshard against the
#      models' own ways at the same precision, every batch shape warmed up, % of the measured bf16 matmul peak,
#      and the bf16 vs fp32 drift (max |difference|, lowest cosine) on 1,000 sequences;
#   4. bench_feed.py at 1, 2, 4 and 8 threads: how the host side scales with the cores a GPU job gets;
#   5. bench_variants.py --device cuda: 20,000 SNVs on a Klebsiella genome with full-size random-weight DNABERT-2
#      (needs Debian's kleborate-examples; without it the step says so and the others still count).
# Each step has its own time limit, so one that overruns costs its own figures only. Every figure and the log go
# to OUT_DIR (at most 8 files). Needs python3 with a CUDA torch, tokenizers, pyarrow, safetensors, psutil, pysam.
#
# Usage: benchmarks/gpu_check.sh OUT_DIR        (from the repository root; PYTHON=... to choose the interpreter)
set -u
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="$out/gpu_check.log"
step() {  # step SECONDS NAME COMMAND...: run with a limit, log it, say how it ended
    local limit=$1 name=$2
    shift 2
    echo "=== $name (limit ${limit} s): $*" | tee -a "$log"
    local started=$SECONDS
    timeout "$limit" "$@" >>"$log" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - started)) s" | tee -a "$log"
}
step 30 machine bash -c "nvidia-smi; $py -c 'import torch; print(torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))'"
cache=$(mktemp -d)
step 75 oom "$py" benchmarks/bench_oom.py --cache-dir "$cache" --out "$out/oom.json"
step 110 inference-dnabert2 "$py" benchmarks/bench_inference.py --device cuda --models dnabert2 --n-dna 20000 \
    --drift 1000 --repeats 1 --cache-dir "$cache" --out "$out/inference-dnabert2.json"
step 165 inference-lucaone "$py" benchmarks/bench_inference.py --device cuda --models lucaone --n-protein 2000 \
    --single-n 500 --drift 1000 --repeats 1 --cache-dir "$cache" --out "$out/inference-lucaone.json"
step 90 feed "$py" benchmarks/bench_feed.py --threads 1,2,4,8 --repeats 1 --out "$out/feed.json"
step 80 variants "$py" benchmarks/bench_variants.py --device cuda --model full --n 20000 --threads 8 \
    --batch-tokens 65536 --out "$out/variants.json"
rm -rf "$cache"
tail -n 60 "$log"
