#!/usr/bin/env bash
# WER of a checkpoint on dev and on its noisy copies (scripts/noisy_manifest.py), one line per condition.
#   examples/synth/results/noise/eval_noisy.sh CKPT OUT [DATA] [NOISY]
# NOISY/dev-COLOURSNR/dev.tsv are made first when missing (white, pink, brown, babble at 20 and 10 dB).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../../.." && pwd)
ckpt=$1; out=$2; data=${3:-$REPO/data/synth6k-wide-r2}; noisy=${4:-/tmp/noisy-dev}
export PATH="$REPO/.venv/bin:$PATH"
conditions="clean white20 pink20 brown20 babble20 white10 pink10 brown10 babble10"
: > "$out"
for c in $conditions; do
  m=$noisy/dev-$c/dev.tsv
  if [ "$c" = clean ]; then m=$data/dev.tsv
  elif [ ! -f "$m" ]; then
    python "$REPO/scripts/noisy_manifest.py" --manifest "$data/dev.tsv" --noise "${c%%[0-9]*}" --snr "${c##*[a-z]}" \
      --out "$noisy/dev-$c" >/dev/null 2>&1
  fi
  w=$(OMP_NUM_THREADS=1 fairseq-hkd-transcribe --path "$ckpt" --manifest "$m" --beam 5 --output /dev/null 2>&1 \
      | grep -o "WER [0-9.]*%" | tail -1)
  echo -e "$c\t$w" | tee -a "$out"
done
