#!/usr/bin/env bash
# The engine's GPU targets, measured in one go (python -m worker.bench; generated images, weights none: speed does
# not depend on the values). Writes every figure as JSON under $OUT and a verdict per target:
#   side    the engine beside the plain loop in one process, epoch by epoch, with the raw forward limit (DeiT-B
#           distilled and DenseNet201 at the paper preset, SIDE_IMAGES/SIDE_VAL/SIDE_EPOCHS): epoch 1, the last
#           epoch and the whole run; epoch 1 at least 0.95x the plain loop's. The fill's chunk sizes are measured on
#           the device and a small last chunk runs unpadded where padding costs more than a kernel selection
#           (worker/engine/features.py ChunkPlan): the JSON says which sizes it chose
#   deit    DeiT-B distilled, paper preset (fp32 with TF32), 50,000 + 10,000 images, 20 epochs: <= 60 s end to end
#   table1  every Table 1 model in its paper preset; from the same rows: each paper CNN's epoch 1 at least half its
#           plain frozen forward at a fixed batch, and the whole table <= 15 minutes on one H100 (measured when
#           TABLE1_IMAGES/VAL/EPOCHS are the paper's 50000/10000/20; otherwise projected linearly from them)
#   cnn     (not in the default STEPS: table1 covers it) the five CNNs alone, at TABLE1's sizes
#   ieee    (optional) the DeiT run with TF32 off: what TF32 buys
# Usage on the device (torch and timm preinstalled; nothing is downloaded):
#   OUT=/some/dir bash tools/gpu_check.sh                        # defaults below
#   STEPS="deit table1" TABLE1_IMAGES=50000 TABLE1_VAL=10000 TABLE1_EPOCHS=20 bash tools/gpu_check.sh
#   TABLE1_MODELS=resnet152,vgg19 ...                            # a part of the table (one command is <= 10 min)
#   STEPS=side SIDE_MODELS=deit_base_distilled_patch16_224 ...   # one model beside its plain loop
# Rehearsal on the CPU: TINY=1 bash tools/gpu_check.sh  (32 px, 64 images, a few small models).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
CNNS=resnet152,tf_efficientnetv2_l,vgg19,dm_nfnet_f6,densenet201
if [ "${TINY:-0}" = 1 ]; then
  DEVICE=${DEVICE:-cpu}; SMALL=(--image-size 32 --batch-size 32 --frozen-iters 2)
  DEIT_SIZE=(--images 64 --val-images 32 --epochs 2)
  TABLE1_IMAGES=${TABLE1_IMAGES:-64}; TABLE1_VAL=${TABLE1_VAL:-32}; TABLE1_EPOCHS=${TABLE1_EPOCHS:-2}
  TABLE1_MODELS=${TABLE1_MODELS:-densenet201,coat_lite_small}; CNNS=${CNN_MODELS:-densenet201}
  SIDE_SIZE=(--images "${SIDE_IMAGES:-64}" --val-images "${SIDE_VAL:-32}" --epochs "${SIDE_EPOCHS:-2}"
             --limit-images 64 --limit-batch 32)
  SIDE_MODELS=${SIDE_MODELS:-densenet201}
else
  DEVICE=${DEVICE:-cuda}; SMALL=()
  DEIT_SIZE=(--images 50000 --val-images 10000 --epochs 20)
  TABLE1_IMAGES=${TABLE1_IMAGES:-10000}; TABLE1_VAL=${TABLE1_VAL:-2000}; TABLE1_EPOCHS=${TABLE1_EPOCHS:-3}
  TABLE1_MODELS=${TABLE1_MODELS:-}; CNNS=${CNN_MODELS:-$CNNS}
  SIDE_SIZE=(--images "${SIDE_IMAGES:-10000}" --val-images "${SIDE_VAL:-2000}" --epochs "${SIDE_EPOCHS:-6}"
             --limit-images 2048)
  SIDE_MODELS=${SIDE_MODELS:-deit_base_distilled_patch16_224,densenet201}
fi
STEPS=${STEPS:-env side deit table1}
COMMON=(--weights none --device "$DEVICE" "${SMALL[@]}")
T1_SIZE=(--images "$TABLE1_IMAGES" --val-images "$TABLE1_VAL" --epochs "$TABLE1_EPOCHS")

step() {  # name, then the command: its output to $OUT/<name>.log, its wall time to $OUT/<name>.time
  local name=$1; shift
  echo "== $name: $*"
  local t0; t0=$(date +%s%N)
  "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%d.%03d %d\n' $((ms / 1000)) $((ms % 1000)) "$rc" > "$OUT/$name.time"
  tail -n 20 "$OUT/$name.log"
  echo "== $name: exit $rc, $(cut -d' ' -f1 "$OUT/$name.time") s"
}

for s in $STEPS; do
  case $s in
    env) step env "$PY" - <<'PY'
import json, os, torch, timm
from worker.engine.device import fp32_math
info = {"torch": torch.__version__, "timm": timm.__version__, "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
with fp32_math(True):  # the paper preset's switches, as the engine sets them for a run
    # The new API's switches only: reading the legacy allow_tf32 flags once these are set is an error in torch 2.9+
    info["tf32_in_run"] = {"matmul": torch.backends.cuda.matmul.fp32_precision,
                           "conv": torch.backends.cudnn.conv.fp32_precision}
    if torch.cuda.is_available():  # a matmul's result differs from IEEE fp32 only where TF32 really runs
        a = torch.randn(1024, 1024, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        tf32 = a @ a
with fp32_math(False):
    if torch.cuda.is_available():
        exact = a @ a
        info["tf32_matmul_rel_diff"] = float(((tf32 - exact).norm() / exact.norm()).item())
print(json.dumps(info, indent=2))
open(os.path.join(os.environ.get("OUT", "."), "env.json"), "w").write(json.dumps(info, indent=2))
PY
      ;;
    side) for m in ${SIDE_MODELS//,/ }; do
            step "side-$m" "$PY" -m worker.bench --model "$m" --variants paper "${SIDE_SIZE[@]}" "${COMMON[@]}" \
              --json "$OUT/side-$m.json"
          done ;;
    deit) step deit "$PY" -m worker.bench --table1 --models deit_base_distilled_patch16_224 "${DEIT_SIZE[@]}" \
            "${COMMON[@]}" --json "$OUT/deit.json" ;;
    ieee) step ieee "$PY" -m worker.bench --table1 --variants ieee --models deit_base_distilled_patch16_224 \
            "${DEIT_SIZE[@]}" "${COMMON[@]}" --json "$OUT/ieee.json" ;;
    cnn) step cnn "$PY" -m worker.bench --table1 --models "$CNNS" "${T1_SIZE[@]}" "${COMMON[@]}" \
            --json "$OUT/cnn.json" ;;
    table1) step table1 "$PY" -m worker.bench --table1 ${TABLE1_MODELS:+--models "$TABLE1_MODELS"} "${T1_SIZE[@]}" \
            "${COMMON[@]}" --json "$OUT/table1.json" ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done

# The verdicts, from whatever the steps wrote.
OUT=$OUT CNNS=$CNNS "$PY" - <<'PY'
import json, os
from pathlib import Path
out = Path(os.environ["OUT"])
cnns = set(os.environ["CNNS"].split(","))
load = lambda n: json.loads((out / f"{n}.json").read_text()) if (out / f"{n}.json").exists() else None
verdict = {}
deit = load("deit")
if deit and deit["models"]:
    r = deit["models"][0]
    took = float((out / "deit.time").read_text().split()[0])
    verdict["deit_fp32_tf32_end_to_end"] = {
        "target_s": 60, "engine_run_s": r["wall_s"], "command_s": round(took, 1), "first_point_s": r["first_point_s"],
        "epoch1_s": r["epoch1_s"], "later_epoch_s": r["later_epoch_s"], "tf32": r["tf32"],
        "size": [deit["images"], deit["val_images"], deit["epochs"]], "pass": r["wall_s"] <= 60}
rows = {}
for n in ("cnn", "table1"):
    d = load(n)
    for r in (d or {}).get("models", []):
        rows[r["model"]] = r
cnn_rows = {m: r for m, r in rows.items() if m in cnns}
if cnn_rows:
    verdict["cnn_epoch1_vs_frozen"] = {m: {"epoch1_images_per_s": r["epoch1_images_per_s"],
                                           "frozen_images_per_s": r["frozen_images_per_s"],
                                           "ratio": r["epoch1_vs_frozen"], "pass": (r["epoch1_vs_frozen"] or 0) >= 0.5}
                                       for m, r in cnn_rows.items()}
t1 = load("table1")
if t1:
    full = (t1["images"], t1["val_images"], t1["epochs"]) >= (50000, 10000, 20)
    secs = t1["total"]["engine_s"] if full else t1["total"]["projected_paper_s"]
    complete = len(t1["models"]) == 10 and not t1["failed"]
    verdict["table1_total"] = {"target_s": 900, "measured_s" if full else "projected_s": secs,
                               "elapsed_s": t1["total"]["elapsed_s"], "models": len(t1["models"]),
                               "failed": t1["failed"], "first_point_s": t1["total"]["first_point_s"],
                               "size": [t1["images"], t1["val_images"], t1["epochs"]], "complete": complete,
                               "pass": complete and secs <= 900}
for f in sorted(out.glob("side-*.json")):
    r = json.loads(f.read_text())
    s = r["summary"]
    verdict.setdefault("side_by_side", {})[r["model"]] = {
        "epoch1_speedup": s["epoch1"]["speedup"], "epoch1_vs_forward_limit": s["epoch1"]["engine_vs_limit"],
        "last_epoch_speedup": s["last"]["speedup"], "whole_speedup": s["whole"]["speedup"],
        "chunk_sizes": r["engine"].get("chunk_sizes"), "size": [r["images"], r["val_images"], r["epochs"]],
        "pass": (s["epoch1"]["speedup"] or 0) >= 0.95}
(out / "summary.json").write_text(json.dumps(verdict, indent=2))
print(json.dumps(verdict, indent=2))
PY
