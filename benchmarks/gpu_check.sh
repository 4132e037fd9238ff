#!/usr/bin/env bash
# The GPU checks in one run, for a CUDA machine whose python3 has torch and triton: the CUDA tests
# (tests/test_gpu.py, tests/test_cif_op_triton.py, the generator's), the CIF op benchmark and the
# training-throughput benchmark. Each step's output goes to OUTDIR/<step>.txt; a failing step does
# not stop the others, and the exit status counts the failed steps.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]          # default OUTDIR: $OUT, else /tmp/gpu_check
#
# Where the machine's python3 lacks fairseq and our other dependencies (a bare GPU image with no
# package index), put them in .whl/ of the checkout first: wheels for its Python (.whl/*.whl),
# pure-Python packages (.whl/py/<package>/) and the fairseq-fixed sdist (.whl/src/*.tar.gz, whose two
# Cython extensions are built here).
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
OUTDIR=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
failed=0

step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name: $*"
  timeout "$limit" "$@" >"$OUTDIR/$name.txt" 2>&1
  local rc=$?
  echo "== $name: rc=$rc, $((SECONDS - t0)) s"
  tail -n 25 "$OUTDIR/$name.txt"
  [ $rc -eq 0 ] || failed=$((failed + 1))
}

if [ -d .whl ]; then
  SITE=/tmp/gpu_check_site
  mkdir -p "$SITE"
  ls .whl/*.whl >/dev/null 2>&1 && $PY -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  [ -d .whl/py ] && cp -r .whl/py/. "$SITE"/
  for sdist in .whl/src/*.tar.gz; do
    [ -e "$sdist" ] || continue
    tar xzf "$sdist" -C /tmp
    src=/tmp/$(basename "$sdist" .tar.gz)
    (cd "$src" && $PY - <<'EOF' >"$OUTDIR/build_fairseq.txt" 2>&1) || echo "fairseq extensions: build failed"
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

ext = [Extension(f"fairseq.data.{m}", [f"fairseq/data/{m}.pyx"], include_dirs=[numpy.get_include()],
                 language="c++") for m in ("data_utils_fast", "token_block_utils_fast")]
setup(script_args=["build_ext", "--inplace"], ext_modules=cythonize(ext, quiet=True))
EOF
    export PYTHONPATH="$src:${PYTHONPATH:-}"
  done
  export PYTHONPATH="$SITE:${PYTHONPATH:-}"
fi
export PYTHONPATH="$REPO:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

step env 60 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; \
  $PY -c 'import sys, torch, triton, fairseq, fairseq_hkd; print(sys.version.split()[0], \"torch\", torch.__version__, \
  \"cuda\", torch.version.cuda, \"triton\", triton.__version__, \"fairseq\", fairseq.__version__, torch.cuda.get_device_name())'"
step tests 300 $PY -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py tests/test_cif_op_triton.py \
  "tests/test_generator.py::test_cuda_matches_cpu" -s \
  -k "not test_interpreter and not test_aot_compile"  # those two run in CI, no GPU needed
step bench_cif 120 $PY benchmarks/bench_cif.py --device cuda --sizes 8,500,256 16,1000,512 64,1500,512 --rounds 7
step bench_train 120 $PY benchmarks/bench_train.py --device cuda --steps 10 --warmup 3
step bench_train_b64 120 $PY benchmarks/bench_train.py --device cuda --arch cif_conformer_paper --batch-size 64 \
  --steps 10 --warmup 3
echo "gpu_check: $failed step(s) failed; outputs in $OUTDIR"
exit $failed
