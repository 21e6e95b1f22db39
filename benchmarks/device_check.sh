#!/usr/bin/env bash
# The device check (benchmarks/device_check.py): every GPU-only figure of sslvit in one run, under 8 minutes
# on an H200, so that a second try fits in a 15-minute lease.
#
#   benchmarks/device_check.sh OUT_DIR            # on the GPU machine (the device tool: see below)
#   benchmarks/device_check.sh OUT_DIR --dry-run  # tiny models on a CPU, a few minutes: the script works
#   benchmarks/device_check.sh --dry-run --out OUT_DIR   # the same, the folder named by --out (any order)
#
# The lent GPU machine has torch, lightning, timm and torchmetrics but not webdataset, braceexpand, faiss,
# simplejpeg or jsonargparse: their wheels travel in .whl/ (ignored by git), made here once with
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl webdataset braceexpand faiss-cpu simplejpeg jsonargparse docstring-parser typeshed-client timm==1.0.31 \
#     kornia kornia_rs
#   (timm as tested here: the image's own may be older; kornia only for the data stage's comparison)
# and the device tool's run is: carry [".whl"], command
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   && benchmarks/device_check.sh $OUT      (334 s on an H200, 2026-12-01: docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: benchmarks/device_check.sh OUT_DIR [--dry-run]  (or --out OUT_DIR, in any order)"
out="" rest=()
while (($#)); do
  case "$1" in
    --out) [[ $# -ge 2 ]] || { echo "$usage" >&2; exit 2; }; out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    --budget) rest+=("$1" "${2:-}"); shift $(($# >= 2 ? 2 : 1)) ;;
    --only) rest+=("$1"); shift; while (($#)) && [[ "$1" != -* ]]; do rest+=("$1"); shift; done ;;
    -*) rest+=("$1"); shift ;;
    *) [[ -z "$out" ]] || { echo "$usage: a second folder, $1" >&2; exit 2; }; out="$1"; shift ;;
  esac
done
[[ -n "$out" ]] || { echo "$usage" >&2; exit 2; }
set -- "${rest[@]}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
mkdir -p "$out"
limit=470  # 7 min 50 s: a second try fits in the lease
[[ " $* " == *" --dry-run "* ]] && limit=1800
# the log beside the JSON and the table: the three files that come back from the device machine
timeout $limit python3 benchmarks/device_check.py --out "$out" "$@" 2>&1 | tee "$out/device_check.log"
