#!/usr/bin/env bash
# The GPU measurements of the diffusion fast path and the full-shape rehearsal, in one go (docs/diffusion.md).
#
#   bash benchmarks/gpu_rehearsal.sh OUT [stage ...]      stages: tree sampling nette imagenet1k compare
#                                                         (default: all, in that order)
# tree        ImageNet-format tree (1000 wnids, 3 train + 1 val JPEG each, odd sizes, a greyscale and a CMYK
#             file), DiT-XL/2 random weights (.pt and diffusers), AutoencoderKL of sd-vae-ft-mse's config
# sampling    benchmarks/sampling.py at the targets' shape (DiT-XL/2, 256 px, 50 steps, CFG 4, batch 64):
#             fp32 | bf16 autocast | bf16 weights | bf16 + torch.compile; decode, MGD3, ACS, Minimax parts
# nette       dit, minimax (2 fine-tuning steps), mgd3, acs on nette with the random weights, short protocol
# imagenet1k  dit, minimax (2 steps per phase: 50 phases), mgd3 (mode discovery over 1000 classes) at IPC 1
# compare     fp32 vs bf16 on Fashion-MNIST IPC 10 under dc, 10 evaluation models each (needs the fashion
#             generator in $DDBENCH_CACHE, or trains it there first)
# The tree holds 3 / 1 images per class, not ILSVRC-2012's 732-1300 / 50: every run passes
# --allow-nonstandard-subset (each record then names the difference). The same commands at IPC 1 on a CPU, with
# tiny step counts: benchmarks/cpu_rehearsal.py (run it first; tests/test_rehearsal.py runs them in CI).
# Every stage appends JSON lines to OUT/<stage>.jsonl; the method runs also keep OUT/runs-<stage>/results.db
# (timings and peak memory per phase in every record). Budget: about 10 min per stage on one H100/H200
# (sampling and imagenet1k are the longest). Random weights: speed and memory only, never quality.
set -euo pipefail
OUT=${1:?usage: gpu_rehearsal.sh OUT [stage ...]}
shift
STAGES=${*:-tree sampling nette imagenet1k compare}
PY=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
R=$OUT/rehearsal
export DDBENCH_NO_PROGRESS=1 DDBENCH_SET_METRICS=${DDBENCH_SET_METRICS:-off}
W=(--dit "$R/DiT-XL-2-256x256.pt" --vae "$R/sd-vae-ft-mse" --imagenet-root "$R/imagenet" --device cuda
   --allow-nonstandard-subset)
SHORT=(--set protocol.epochs=2 --set protocol.eval_points=1)

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

summarise() {  # the records of a run directory as JSON lines: method, dataset, timings, peak memory
  "$PY" - "$1" <<'EOF'
import json, sys
from ddbench.records.store import ResultStore
keep = ("method", "dataset", "ipc", "seed", "arch", "eval_seed", "acc_last", "timings", "peak_mem", "device")
for rec in ResultStore(f"{sys.argv[1]}/results.db").query():
    print(json.dumps({k: rec.get(k) for k in keep}))
EOF
}

run_method() {  # stage method dataset ipc [--set ...]
  local stage=$1 method=$2 dataset=$3 ipc=$4
  shift 4
  log "$stage: $method on $dataset at IPC $ipc"
  local t0=$SECONDS
  "$PY" -m ddbench.cli run --method "$method" --dataset "$dataset" --ipc "$ipc" --out "$OUT/runs-$stage" \
    "${W[@]}" "${SHORT[@]}" "$@" || echo "{\"stage\": \"$stage\", \"method\": \"$method\", \"failed\": true}" >>"$OUT/$stage.jsonl"
  echo "{\"stage\": \"$stage\", \"method\": \"$method\", \"dataset\": \"$dataset\", \"ipc\": $ipc, \"wall_s\": $((SECONDS - t0))}" >>"$OUT/$stage.jsonl"
}

for stage in $STAGES; do
  case $stage in
    tree)
      log "tree + weights"
      "$PY" "$HERE/imagenet_tree.py" "$R" --train 3 --val 1 >>"$OUT/tree.jsonl"
      "$PY" "$HERE/imagenet_tree.py" "$R" --check --device cuda >>"$OUT/tree.jsonl" ;;
    sampling)
      BASE=(--model XL/2 --input-size 32 --depth 0 --batch 64 --steps 50 --vae sd-vae-ft-mse --device cuda
            --reference-images 2 --repeats 2 --ft-batch 8 --ft-steps 20)
      for p in fp32 bf16 bf16-weights; do
        log "sampling: $p"
        "$PY" "$HERE/sampling.py" "${BASE[@]}" --precision "$p" >>"$OUT/sampling.jsonl"
      done
      log "sampling: bf16 + compile, and batch 256"
      "$PY" "$HERE/sampling.py" "${BASE[@]}" --precision bf16 --compile --parts sampling,decode,mgd3 >>"$OUT/sampling.jsonl"
      "$PY" "$HERE/sampling.py" "${BASE[@]}" --precision bf16 --compile --batch 256 --parts sampling >>"$OUT/sampling.jsonl" ;;
    nette)
      run_method nette dit nette 1 --set steps=10
      run_method nette minimax nette 1 --set steps=10 --set finetune.steps=2
      run_method nette mgd3 nette 1 --set sampling.steps=10
      run_method nette acs nette 2 --set sampling.steps=10 --set "schedule=[1,1]" --set disc.epochs=1
      summarise "$OUT/runs-nette" >>"$OUT/nette.jsonl" ;;
    imagenet1k)
      run_method imagenet1k dit imagenet1k 1 --set steps=10 --set batch_size=250
      run_method imagenet1k mgd3 imagenet1k 1 --set sampling.steps=10 --set sampling.batch_size=250
      run_method imagenet1k minimax imagenet1k 1 --set steps=10 --set batch_size=250 --set finetune.steps=2
      summarise "$OUT/runs-imagenet1k" >>"$OUT/imagenet1k.jsonl" ;;
    compare)
      log "compare: fashion IPC 10, fp32 vs bf16, 10 evaluation models each"
      "$PY" "$HERE/fastpath_compare.py" --dataset fashion --ipc 10 --eval-seeds 0-9 --device cuda \
        --out "$OUT/runs-compare" >>"$OUT/compare.jsonl" ;;
    *) echo "unknown stage $stage; expected tree sampling nette imagenet1k compare" >&2; exit 2 ;;
  esac
done
log "done: $OUT/*.jsonl"
