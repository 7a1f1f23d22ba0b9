#!/usr/bin/env bash
# The data plane at ILSVRC scale on this machine (issue 11), one command:
#   . .venv/bin/activate && bash benchmarks/shadow_ilsvrc.sh [WORK_DIR] [NUM_VAL_IMAGES]
# (WSOL_METADATA=<folder with ILSVRC/test> reuses an extracted copy of tests/assets/wsol-metadata.tar.xz;
#  RESUME=1 adds the kill-at-half-way + rerun at N images, HEAD_CHANNELS sets the CAM head's width, 32 by default:
#  on 2 CPU cores the small model at 224 runs ~20 images/s with the pipeline's 128, which puts 50,000 images
#  past an hour; the data plane, not the model, is what this measures. SIZES="1000 50000" PLAIN_MAX=1000 is the
#  shorter run that was measured.)
# 1. the shadow ILSVRC val set (real sizes and boxes of the 50,000 val images) + 2 train images per class
# 2. the prepare stage on it (time, peak memory), and the readers' files/s with verification on and off
# 3. extraction at 224 (small backbone, CAM head): Ray Data at 1,000 / 10,000 / N images, the plain DataLoader
#    loop at 1,000 / 10,000, decode-only and model-only rates (RESUME=1: a kill at half way and its rerun at N)
# 4. the evaluate stage on the N extracted maps with the full protocol (threshold step 0.001), and its profile
# Figures go to benchmarks/results/shadow_*.json and the *.time files (GNU time -v) under WORK_DIR.
set -euo pipefail
work=${1:-/tmp/shadow_ilsvrc}
n=${2:-50000}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db"  # keep these runs out of the project's store
mkdir -p "$work"
meta=${WSOL_METADATA:-$work/wsol-metadata}
if [ ! -d "$meta/ILSVRC/test" ]; then
  mkdir -p "$meta" && tar -xJf tests/assets/wsol-metadata.tar.xz -C "$meta"
fi
shadow=(--set data.synthetic.layout=shadow_ilsvrc --set data.synthetic.num_classes=1000
  --set "data.synthetic.shadow_metadata=$meta/ILSVRC/test" --set "data.synthetic.num_val_images=$n"
  --set data.synthetic.train_per_class=2 --set data.synthetic.jpeg_quality=90 --set data.synthetic.holdout_per_class=0)
data=(--set data.source=ilsvrc --set "data.root=$work/data" --set data.mask_dir=null)

echo "== 1. generate $n shadow val images"
/usr/bin/time -v -o "$work/generate.time" python pipelines/synthesize.py --out "$work/data" "${shadow[@]}"
echo "== 2. prepare"
/usr/bin/time -v -o "$work/prepare.time" python pipelines/prepare.py --out "$work/prepare" "${data[@]}"
python benchmarks/bench_index.py --root "$work/data" --out benchmarks/results/shadow_index.json
echo "== 3. extract"
python benchmarks/bench_extract.py --manifest "$work/prepare/val.parquet" --data-root "$work/data" \
  --sizes ${SIZES:-$(printf '%s\n' 1000 10000 "$n" | awk -v n="$n" '$1 <= n' | sort -nu)} --plain-max "${PLAIN_MAX:-10000}" ${RESUME:+--resume} --components 512 --method cam --head-channels "${HEAD_CHANNELS:-32}" \
  --num-classes 1000 --image-size 224 --batch-size 64 --keep "$work/extract" --out benchmarks/results/shadow_extract.json
echo "== 4. evaluate (full protocol)"
/usr/bin/time -v -o "$work/evaluate.time" python pipelines/evaluate.py --method cam --maps "$work/extract/maps" \
  --manifest "$work/extract/manifest.parquet" --model-card "$work/extract/model_card.json" \
  --model outputs/train/cam/model.pt --out "$work/evaluate" \
  "${data[@]}" --set evaluate.interval=0.001
python benchmarks/profile_evaluate.py --maps "$work/extract/maps" --manifest "$work/extract/manifest.parquet" \
  --images 5000 --interval 0.001 --out benchmarks/results/profile_evaluate.json
for f in generate prepare evaluate; do
  printf '%s: %s, %s\n' "$f" "$(grep 'Elapsed (wall' "$work/$f.time")" "$(grep 'Maximum resident' "$work/$f.time")"
done
