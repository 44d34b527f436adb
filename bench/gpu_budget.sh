#!/usr/bin/env bash
# The embedded default at a GPU budget: does SegLoc beat random init, and the per-class queue the
# single queue, once pretraining and fine-tuning run long enough? Runs the pipeline's own CLIs on
# the default demo data with the larger budget the README names (no dvc needed on the machine):
#
#   bench/gpu_budget.sh                       # results under ./gpu_out
#   OUT=dir STEPS=3000 EVAL_STEPS=1000 bench/gpu_budget.sh
#
# Pretraining: segloc and segloc with one queue, side by side on one GPU, STEPS steps at 224 px
# crops. Fine-tuning: random, segloc and segloc-single, eval.repeats seeds each, EVAL_STEPS steps
# at 128 px crops of 256 px scans. Writes $OUT/budget.log, $OUT/results.md (the report),
# $OUT/budget.json (every run's scores and timings) and $OUT/queue.txt (same- vs cross-class key
# cosine of the segloc bank) and both pretraining loss curves. Small values of STEPS/EVAL_STEPS check the script on a CPU.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$REPO"
exec > >(tee -a "$OUT/budget.log") 2>&1

STEPS="${STEPS:-3000}"
EVAL_STEPS="${EVAL_STEPS:-1000}"
CROP="${CROP:-224}"
WORK="${WORK:-$REPO/runs/budget}"
source "$REPO/bench/env.sh"  # sets PY and PYTHONPATH
CORES="$(nproc)"
cli() { local mod="$1"; shift; "$PY" -c "import sys; from $mod import main; main()" "$@"; }
stamp() { echo "[$(date -u +%H:%M:%S) +$((SECONDS))s] $*"; }

"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
rm -rf "$WORK"
mkdir -p "$WORK"

stamp "demo data and render on $CORES cores"
# Everything lives under $WORK: its own demo data, and a copy of params.yaml pointing at it, so
# the workspace's data/ and dvc state are left alone.
cli synth.cli demo-data --out "$WORK/demo" --scale full --seed 0 --workers 0 --force
PARAMS="$WORK/params.yaml"
"$PY" - "$REPO/params.yaml" "$PARAMS" "$WORK/demo" <<'PYEOF'
import sys
import yaml
src, dst, demo = sys.argv[1:]
params = yaml.safe_load(open(src))
def move(node):
    for key, value in node.items():
        if isinstance(value, dict):
            move(value)
        elif isinstance(value, str) and value.startswith("data/demo/"):
            node[key] = demo + value[len("data/demo"):]
move(params["data"])
open(dst, "w").write(yaml.safe_dump(params, sort_keys=False))
PYEOF
cli synth.cli render --out "$WORK/shards" --params "$PARAMS" --workers "$CORES"

# Concurrent jobs share the cores: two pretraining runs and one fine-tune, then two fine-tunes.
SHARE=$(( CORES / 4 > 1 ? CORES / 4 : 1 ))
PT=(--params "$PARAMS" --set pretrain.steps="$STEPS" --set pretrain.augment.crop="$CROP"
    --set pretrain.workers="$SHARE" --set pretrain.threads=2 --set pretrain.checkpoint_every=1000)
EV=(--params "$PARAMS" --set eval.steps="$EVAL_STEPS" --set eval.base_size=256
    --set eval.crop_size=128 --set eval.threads="$SHARE")

stamp "pretrain segloc, segloc-single; fine-tune random"
cli train.cli --method segloc --shards "$WORK/shards" --out "$WORK/pretrain/segloc" "${PT[@]}" \
  >"$WORK/pt-segloc.log" 2>&1 &
P1=$!
cli train.cli --method segloc --set pretrain.queue=single --shards "$WORK/shards" \
  --out "$WORK/pretrain/segloc-single" "${PT[@]}" >"$WORK/pt-single.log" 2>&1 &
P2=$!
cli eval.cli --init random --out "$WORK/finetune/random" "${EV[@]}" >"$WORK/ft-random.log" 2>&1 &
P3=$!
wait $P1 || { tail -20 "$WORK/pt-segloc.log"; exit 1; }
wait $P2 || { tail -20 "$WORK/pt-single.log"; exit 1; }
stamp "pretraining done"
tail -n 2 "$WORK/pt-segloc.log" "$WORK/pt-single.log"

stamp "fine-tune segloc, segloc-single"
cli eval.cli --init "$WORK/pretrain/segloc" --out "$WORK/finetune/segloc" "${EV[@]}" \
  >"$WORK/ft-segloc.log" 2>&1 &
P4=$!
cli eval.cli --init "$WORK/pretrain/segloc-single" --out "$WORK/finetune/segloc-single" "${EV[@]}" \
  >"$WORK/ft-single.log" 2>&1 &
P5=$!
wait $P3 || { tail -20 "$WORK/ft-random.log"; exit 1; }
wait $P4 || { tail -20 "$WORK/ft-segloc.log"; exit 1; }
wait $P5 || { tail -20 "$WORK/ft-single.log"; exit 1; }
stamp "fine-tuning done"

cli eval.cli report --runs "$WORK/finetune/random" --runs "$WORK/finetune/segloc" \
  --runs "$WORK/finetune/segloc-single" --pretrain "$WORK/pretrain/segloc" \
  --pretrain "$WORK/pretrain/segloc-single" --out "$WORK/report"
cp "$WORK/report/results.md" "$OUT/results.md"
cp "$WORK/pretrain/segloc/plots/train.tsv" "$OUT/train-segloc.tsv"
cp "$WORK/pretrain/segloc-single/plots/train.tsv" "$OUT/train-segloc-single.tsv"

"$PY" - "$WORK" "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path

import torch

work, out = Path(sys.argv[1]), Path(sys.argv[2])
summary = {"pretrain": {}, "finetune": {}}
for run in sorted((work / "pretrain").iterdir()):
    summary["pretrain"][run.name] = json.loads((run / "metrics.json").read_text())
for run in sorted((work / "finetune").iterdir()):
    summary["finetune"][run.name] = json.loads((run / "metrics.json").read_text())
(out / "budget.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")

# Does the per-class bank hold class structure? Mean cosine of keys within a class vs across.
ckpt = torch.load(work / "pretrain/segloc/checkpoint.pt", map_location="cpu", weights_only=False)
bank = ckpt["model"]["queue"].float()  # classes x dim x keys
c, d, k = bank.shape
keys = bank.permute(0, 2, 1).reshape(c * k, d)
label = torch.arange(c).repeat_interleave(k)
sim = keys @ keys.T
same = label[:, None] == label[None, :]
eye = torch.eye(c * k, dtype=torch.bool)
line = (f"segloc bank at step {ckpt['step']}: same-class key cosine "
        f"{sim[same & ~eye].mean():.3f}, cross-class {sim[~same].mean():.3f}, "
        f"|mean key| {keys.mean(0).norm():.3f}")
(out / "queue.txt").write_text(line + "\n")
print(line)
PYEOF
stamp "done"
cat "$OUT/results.md"
