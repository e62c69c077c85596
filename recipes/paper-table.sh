#!/usr/bin/env bash
# The paper's table (CCE-ASR, CLIP, FID, CARE, RATIO) for the base model and each eraser, end to end:
# target images, CARE-set, adversarial tokens, one erasure per method, a CCE attack on every model, COCO-style
# sampling for CLIP and FID, CARE prompts for the CARE score, I2P-style prompts if given, then `recare report`.
#
# Every setting is an environment variable (defaults: the paper's nudity table on SD 1.4, on one GPU). Every
# step writes its own file in $OUT and is skipped when that file exists, and the long commands resume, so an
# interrupted run continues where it stopped: re-run the same command. docs/recipe.md lists the costs.
#
#   COCO=coco_30k.csv COCO_REFERENCE=coco-ref.npz I2P=unsafe-prompts4703.csv recipes/paper-table.sh
#
# The toy world (CPU, minutes, tiny settings; what CI runs): `just paper-table-toy`.
set -euo pipefail

OUT=${OUT:-paper-table}
MODEL=${MODEL:-CompVis/stable-diffusion-v1-4}
CLIP=${CLIP:-openai/clip-vit-base-patch32}
TARGET=${TARGET:-nudity}                          # erase/mine/attack --target
TARGET_PROMPT=${TARGET_PROMPT:-A photo of a nude person}
TARGET_IMAGES=${TARGET_IMAGES:-500}               # generations of TARGET_PROMPT for mining, invert and CCE
INITIALIZER=${INITIALIZER:-person}                # invert and CCE --initializer
CONCEPT=${CONCEPT:-person}                        # the CARE column's retained concept (score --concept)
ANCHORS=${ANCHORS:-}                              # stereo: STEREO's anchor prompts (their utils/anchor_prompts.json)
# erase --method, one erased model each; published STEREO needs its authors' anchors, which recare does not ship
if [[ -n $ANCHORS ]]; then METHODS=${METHODS:-esd uce stereo recare}; else METHODS=${METHODS:-esd uce recare}; fi
COCO=${COCO:?COCO: a COCO-style prompt CSV (prompt, evaluation_seed, case_number) for CLIP and FID}
COCO_REFERENCE=${COCO_REFERENCE:?COCO_REFERENCE: real images (a folder) or a recare score --write-reference .npz}
I2P=${I2P:-}                                      # optional: an I2P-style prompt CSV, scored as a second ASR
FID=${FID:-fid}                                   # the FID column's metric: fid (Inception), clipfd or cmmd
ASR=${ASR:-nudity}                                # the ASR column's metric: nudity, or classify for objects/styles
ASR_ARGS=${ASR_ARGS:-}                            # e.g. --labels imagenet.txt --target tench for classify
CCE_IMAGES=${CCE_IMAGES:-10}                      # images per CCE prompt
CARE_IMAGES=${CARE_IMAGES:-10}                    # images per CARE prompt (the reference: 10)
DEVICE=${DEVICE:-auto}
# Extra arguments per stage, e.g. the toy world's tiny settings or --precision bf16 on a GPU.
SAMPLE_ARGS=${SAMPLE_ARGS:-}
MINE_ARGS=${MINE_ARGS:-}
CLUSTER_ARGS=${CLUSTER_ARGS:-}
REFINE_ARGS=${REFINE_ARGS:-}
INVERT_ARGS=${INVERT_ARGS:-}
ERASE_ARGS=${ERASE_ARGS:-}
ATTACK_ARGS=${ATTACK_ARGS:-}
SCORE_ARGS=${SCORE_ARGS:-}
REPORT_ARGS=${REPORT_ARGS:-}
RECARE=${RECARE:-recare}
if [[ " $METHODS " == *" stereo "* ]]; then  # published STEREO anchors on its own prompts, which recare does not ship
  if [[ ! -f $ANCHORS ]]; then
    echo "ANCHORS: --method stereo needs STEREO's anchor prompts (their utils/anchor_prompts.json, docs/erase.md);" \
      "set ANCHORS=FILE or leave stereo out of METHODS" >&2
    exit 2
  fi
  ANCHORS=$(cd "$(dirname "$ANCHORS")" && pwd)/$(basename "$ANCHORS")  # the steps run inside $OUT
fi

export RECARE_MODEL=$MODEL RECARE_CLIP=$CLIP
mkdir -p "$OUT"
cd "$OUT"
say() { printf 'paper-table: %s\n' "$*" >&2; }
# run FILE CMD...: run CMD unless FILE exists (a finished step); CMD writes FILE itself, atomically.
run() { local made=$1; shift; if [[ -e $made ]]; then say "have $made"; else say "making $made"; "$@"; fi; }
# sample_to MANIFEST FOLDER PROMPTS ARGS...: sample into FOLDER, the manifest renamed into place when complete.
sample_to() {
  local manifest=$1 folder=$2 prompts=$3; shift 3
  if [[ -e $manifest ]]; then say "have $manifest"; return; fi
  say "making $manifest"
  $RECARE sample "$prompts" --out "$folder" --device "$DEVICE" $SAMPLE_ARGS "$@" > "$manifest.part"
  mv "$manifest.part" "$manifest"
}

# 1. Images of the target from the base model.
printf 'prompt\n%s\n' "$TARGET_PROMPT" > target-prompt.csv
sample_to target.jsonl target-images target-prompt.csv -n "$TARGET_IMAGES"

# 2. The CARE-set (mine | cluster | refine); clustered.jsonl is kept for hand edits.
run clustered.jsonl bash -o pipefail -c "$RECARE mine target-images --target '$TARGET' --device $DEVICE $MINE_ARGS \
  | $RECARE cluster $CLUSTER_ARGS -o clustered.jsonl"
run care.json $RECARE refine clustered.jsonl $REFINE_ARGS -o care.json

# 3. Adversarial tokens (erase <-> textual inversion rounds), for the methods that erase them.
run adv.safetensors $RECARE invert target-images --target "$TARGET" --initializer "$INITIALIZER" \
  --device "$DEVICE" $INVERT_ARGS -o adv.safetensors

# 4. One erasure per method.
for method in $METHODS; do
  case $method in
    esd|esd-recare|uce) careset=() ;;  # ESD and UCE use neither the CARE-set nor the adversarial tokens
    stereo) careset=(--adversarial adv.safetensors --anchors "$ANCHORS") ;;  # its own anchors, no CARE-set
    *) careset=(--care care.json --adversarial adv.safetensors) ;;
  esac
  run "$method.safetensors" $RECARE erase --method "$method" --target "$TARGET" "${careset[@]}" \
    --device "$DEVICE" $ERASE_ARGS -o "$method.safetensors"
done

# 5. The evaluation prompts of the CARE column.
run care-prompts.csv $RECARE prompts --concept "$CONCEPT" -n "$CARE_IMAGES" -o care-prompts.csv

# 6. Per model: the CCE attack and its images (ASR), COCO images (CLIP, FID), CARE images (CARE), I2P (optional).
models="base $METHODS"
report=()
for name in $models; do
  weights=()
  [[ $name == base ]] || weights=(--weights "$name.safetensors")
  run "cce-$name.safetensors" $RECARE attack target-images --target "$TARGET" --initializer "$INITIALIZER" \
    "${weights[@]}" --device "$DEVICE" $ATTACK_ARGS -o "cce-$name.safetensors" --prompts "cce-$name.csv"
  sample_to "cce-$name.jsonl" "images/cce-$name" "cce-$name.csv" -n "$CCE_IMAGES" "${weights[@]}" \
    --embeddings "cce-$name.safetensors"
  run "asr-$name.json" $RECARE score "cce-$name.jsonl" -m "$ASR" $ASR_ARGS --device "$DEVICE" $SCORE_ARGS \
    -o "asr-$name.json"
  sample_to "coco-$name.jsonl" "images/coco-$name" "$COCO" "${weights[@]}"
  run "coco-$name.json" $RECARE score "coco-$name.jsonl" -m clip -m "$FID" --reference "$COCO_REFERENCE" \
    --device "$DEVICE" $SCORE_ARGS -o "coco-$name.json"
  sample_to "care-$name.jsonl" "images/care-$name" care-prompts.csv "${weights[@]}"
  run "care-$name.json" $RECARE score "care-$name.jsonl" -m care --concept "$CONCEPT" --device "$DEVICE" \
    $SCORE_ARGS -o "care-$name.json"
  if [[ -n $I2P ]]; then
    sample_to "i2p-$name.jsonl" "images/i2p-$name" "$I2P" --row-settings "${weights[@]}"
    run "i2p-$name.json" $RECARE score "i2p-$name.jsonl" -m "$ASR" $ASR_ARGS --device "$DEVICE" $SCORE_ARGS \
      -o "i2p-$name.json"
  fi
  report+=(--model "$name=asr-$name.json,coco-$name.json,care-$name.json")
done

# 7. The table, its JSON and the radar chart.
$RECARE report "${report[@]}" --asr "$ASR" --fid "$FID" $REPORT_ARGS -o report.json --chart radar.svg > table.md
if [[ -n $I2P ]]; then  # the attack-free ASR on I2P-style prompts, one column
  i2p=()
  for name in $models; do i2p+=(--model "$name=i2p-$name.json"); done
  $RECARE report "${i2p[@]}" --asr "$ASR" $REPORT_ARGS -o report-i2p.json > table-i2p.md
fi
cat table.md
