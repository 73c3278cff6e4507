#!/usr/bin/env bash
# Reproduces the bundled model models/lmstudio-lite-tiny from ../shared/data.
#   bash recipes/default_model/train.sh [WORKDIR]
# About 1 hour on the 2-core CI CPU (see the model card for the measured time).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK="${1:-/tmp/lmstudio-lite-default}"
mkdir -p "$WORK"
export LMSTUDIO_LITE_HOME="$WORK/home"

# 1. 16,000 stories sampled from the real stories260K model (MIT), seeded.
python recipes/default_model/generate_stories.py "$WORK/generated_stories.txt" --stories 16000
# 2. The mixture: TinyStories (x2), sampled stories, Tatoeba en<->fr/de, templated
#    story summaries, self-instruct seeds, AdversarialQA; held-out rows excluded.
python recipes/default_model/build_data.py "$WORK/mix.jsonl" --generated "$WORK/generated_stories.txt"
# 3. From scratch with our own trainer: new 4,096-token byte-level BPE, ChatML template.
OMP_WAIT_POLICY=PASSIVE python -m lmstudio_lite train --from-scratch --data "$WORK/mix.jsonl" --chat-template chatml \
    --vocab-size 4096 --n-layer 6 --d-model 192 --n-head 6 --seq-len 256 --batch-size 16 \
    --steps 3000 --lr 2e-3 --warmup-steps 60 --eval-every 250 --save-every 50 --precision bf16 \
    --threads 2 --val-fraction 0.01 --out lmstudio-lite-tiny --probe "Once upon a time"
# 4. A second, shorter cosine cycle at a lower learning rate on the same mixture
#    (a fine-tune of step 3's model with the same trainer).
OMP_WAIT_POLICY=PASSIVE python -m lmstudio_lite train --model "$LMSTUDIO_LITE_HOME/models/lmstudio-lite-tiny" \
    --data "$WORK/mix.jsonl" --seq-len 256 --batch-size 16 --steps 700 --lr 4e-4 --warmup-steps 0 \
    --eval-every 350 --save-every 50 --precision bf16 --threads 2 --val-fraction 0.01 \
    --out lmstudio-lite-tiny-cont --probe "Once upon a time"
# 5. A last short stage on the stories alone (real TinyStories x2 + sampled), lower learning rate.
python recipes/default_model/build_data.py "$WORK/stories.jsonl" --generated "$WORK/generated_stories.txt" --stories-only
OMP_WAIT_POLICY=PASSIVE python -m lmstudio_lite train --model "$LMSTUDIO_LITE_HOME/models/lmstudio-lite-tiny-cont" \
    --data "$WORK/stories.jsonl" --seq-len 256 --batch-size 16 --steps 300 --lr 2e-4 --warmup-steps 0 \
    --eval-every 300 --save-every 50 --precision bf16 --threads 2 --val-fraction 0.01 \
    --out lmstudio-lite-tiny-stories --probe "Once upon a time"
# 6. Copy into models/ and write the model card with the evaluation figures.
RUNS=$(ls -d "$LMSTUDIO_LITE_HOME"/runs/* | sort)
python recipes/default_model/finalize.py "$LMSTUDIO_LITE_HOME/models/lmstudio-lite-tiny-stories" models/lmstudio-lite-tiny \
    $(for r in $RUNS; do printf -- "--run %s " "$r"; done)
