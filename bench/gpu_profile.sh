#!/usr/bin/env bash
# The embedded default at GPU scale (configs/gpu.yaml): demo data, render, every arm of the
# profile, then random init and each arm under every read-out (probe, probe_mlp, finetune,
# finetune_10pct), and
# the report under $OUT/reports/gpu with the card's name, the date and the command. The pipeline's
# own CLIs run in order (no dvc needed on the machine), each stage timed.
#
#   OUT=gpu_out bench/gpu_profile.sh                 # or: make gpu
#   OUT=/tmp/p EXTRA_SETS="synth.num_shards=2 pretrain.steps=3" bench/gpu_profile.sh   # CPU check
#
# EXTRA_SETS: space-separated KEY=VALUE applied after the profile (the test suite shrinks it so).
# Everything but the report stays under $WORK (default $OUT/work): the workspace's data/, runs/
# and reports/ are left alone; copy $OUT/reports/gpu into the repository to commit it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="${WORK:-$OUT/work}"
PROFILE="${PROFILE:-$REPO/configs/gpu.yaml}"
cd "$REPO"
exec > >(tee -a "$OUT/gpu_profile.log") 2>&1
source "$REPO/bench/env.sh"  # sets PY and PYTHONPATH
cli() { local mod="$1"; shift; "$PY" -c "import sys; from $mod import main; main()" "$@"; }
TIMES="$OUT/stage_seconds.tsv"
stage() {  # stage NAME CMD...: run, time, and log one stage
  local name="$1"; shift
  local t0=$SECONDS
  echo "[$(date -u +%H:%M:%S)] $name"
  "$@"
  printf '%s\t%s\n' "$name" "$((SECONDS - t0))" >> "$TIMES"
}

rm -rf "$WORK" "$OUT/reports/gpu"
mkdir -p "$WORK"
printf 'stage\tseconds\n' > "$TIMES"

# params.yaml with the profile (and EXTRA_SETS) applied, every key checked against params.yaml,
# data paths moved under $WORK; prints the arms as "name<TAB>method<TAB>switches" lines.
"$PY" - "$REPO/params.yaml" "$PROFILE" "$WORK" ${EXTRA_SETS:-} > "$WORK/arms.tsv" <<'PYEOF'
import sys
from pathlib import Path

import yaml

from segloc.errors import UserError
from segloc.paper import config_overrides
from segloc.params import apply_override, load_params


def _one_line(kind, err, tb):  # a user's mistake in the profile: one line, no traceback
    if isinstance(err, UserError):
        print(f"error: {err}", file=sys.stderr)
    else:
        sys.__excepthook__(kind, err, tb)


sys.excepthook = _one_line

params_path, profile, work, *extra = sys.argv[1:]
params = load_params(params_path)
overlay = load_params(profile)
arms = overlay.pop("arms", None)  # replaces the default arms whole: no key check
checked = Path(work, "profile.yaml")
checked.write_text(yaml.safe_dump(overlay))
for item in config_overrides(checked, Path(params_path)):
    apply_override(params, item)
if arms is not None:
    params["arms"] = arms  # the profile's arms replace the default ones
for item in extra:
    apply_override(params, item)


def move(node):
    for key, value in node.items():
        if isinstance(value, dict):
            move(value)
        elif isinstance(value, str) and value.startswith("data/demo/"):
            node[key] = f"{work}/demo/{value[len('data/demo/'):]}"


move(params["data"])
Path(work, "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
for name, arm in params["arms"].items():
    print(f"{name}\t{arm['method']}\t{arm.get('switches') or ''}")
PYEOF
P="$WORK/params.yaml"
read -r SCALE SEED < <("$PY" -c "import yaml,sys; d=yaml.safe_load(open(sys.argv[1]))['data']['demo']; print(d['scale'], d['seed'])" "$P")
DEVICE="$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU (no GPU)')")"
echo "device: $DEVICE; profile: $PROFILE; extra: ${EXTRA_SETS:-none}"

stage demo cli synth.cli demo-data --out "$WORK/demo" --scale "$SCALE" --seed "$SEED" --workers 0 --force
stage render cli synth.cli render --out "$WORK/shards" --params "$P"
INITS=(random)
while IFS=$'\t' read -r NAME METHOD SWITCHES; do
  # shellcheck disable=SC2086  # switches are CLI words
  stage "pretrain@$NAME" cli train.cli --method "$METHOD" $SWITCHES --shards "$WORK/shards" \
    --out "$WORK/runs/pretrain/$NAME" --params "$P"
  INITS+=("$NAME")
done < "$WORK/arms.tsv"
read -r -a READOUTS < <("$PY" -c "import yaml,sys; e=yaml.safe_load(open(sys.argv[1]))['eval']; print(' '.join(['probe', 'probe_mlp', *e['finetune_protocols']]))" "$P")
for INIT in "${INITS[@]}"; do
  SPEC="$INIT"; [ "$INIT" = random ] || SPEC="$WORK/runs/pretrain/$INIT"
  for PROTOCOL in "${READOUTS[@]}"; do
    stage "$PROTOCOL@$INIT" cli eval.cli --init "$SPEC" --protocol "$PROTOCOL" \
      --out "$WORK/runs/eval/$INIT/$PROTOCOL" --params "$P"
  done
done
stage report cli eval.cli report --runs "$WORK/runs/eval/*/*" \
  --pretrain "$WORK/runs/pretrain/*" --out "$OUT/reports/gpu"

# Provenance on top of the report: the card, the date, the exact command and the stage times.
"$PY" - "$OUT" "$DEVICE" "OUT=... ${EXTRA_SETS:+EXTRA_SETS=\"$EXTRA_SETS\" }bench/gpu_profile.sh" \
  "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PYEOF'
import csv, datetime, sys
from pathlib import Path

out, device, command, commit = Path(sys.argv[1]), *sys.argv[2:]
rows = list(csv.DictReader((out / "stage_seconds.tsv").open(), delimiter="\t"))
total = sum(int(r["seconds"]) for r in rows)
lines = [
    "# GPU profile of the embedded default\n",
    f"Device: **{device}**; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
    f"commit {commit}; command `{command}`; profile `configs/gpu.yaml`. "
    f"Stages took {total / 60:.1f} min in all:\n",
    "| stage | seconds |",
    "|---|---|",
    *[f"| {r['stage']} | {r['seconds']} |" for r in rows],
    "",
]
md = out / "reports" / "gpu" / "results.md"
md.write_text("\n".join(lines) + "\n" + md.read_text())
(out / "reports" / "gpu" / "stage_seconds.tsv").write_text((out / "stage_seconds.tsv").read_text())
PYEOF
echo "[$(date -u +%H:%M:%S)] done: $OUT/reports/gpu/results.md"
