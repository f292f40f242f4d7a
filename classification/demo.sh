#!/usr/bin/env bash
# The main job on a laptop CPU in a few minutes: generate a 10-class dataset (ImageFolder layout), train the
# tiny ScalableViT (scalable_vit_test) on it with the paper's DeiT recipe, evaluate the best checkpoint, plot the curves.
# Re-running resumes (or skips) the finished training in $OUT.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-../.venv/bin/python}
DATA=${DATA:-../data/demo}
OUT=${OUT:-../output/demo}
EPOCHS=${EPOCHS:-15}

[ -d "$DATA/train" ] || "$PYTHON" make_demo_dataset.py --out "$DATA"
MODEL=(--model scalable_vit_test --input-size 64)  # the registered tiny ScalableViT (not a paper model)
"$PYTHON" main.py "${MODEL[@]}" --data-path "$DATA" --output_dir "$OUT" --epochs "$EPOCHS" --batch-size 32 \
    --lr 8e-3 --warmup-epochs 1 --num_workers 2 --device cpu
"$PYTHON" main.py "${MODEL[@]}" --data-path "$DATA" --eval --resume "$OUT/checkpoint_best.pth" --num_workers 2 \
    --device cpu
"$PYTHON" ../tools/plot_logs.py "$OUT/log.txt" --out "$OUT/curves.png"
