#!/usr/bin/env bash
# The GPU check, kept ready for a machine with CUDA (the project builds and passes without
# one): the CUDA tests (device and dtype choice, option scoring and LoRA training on the
# GPU, each compared with the CPU's), then one demo round profile on the GPU.
#
#     bench/gpu_check.sh                 # with .venv/bin/python (a CUDA build of torch)
#     PYTHON=/path/to/python bench/gpu_check.sh
#
# It refuses to run where no CUDA GPU is visible, and fails if every CUDA test skipped (so
# a CPU-only torch cannot pass for a check). Results go to $OUT (the device tool's folder)
# or bench/results/gpu_check/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
DEST="${OUT:-bench/results/gpu_check}"
mkdir -p "$DEST"

"$PYTHON" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"No CUDA GPU visible to torch {torch.__version__} (a CPU build?): nothing to "
             "check here. Run this on a GPU machine with a CUDA build of torch.")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$DEST/gpu.csv"

# The CUDA tests; -rs lists skips, and a run where all of them skipped is a failure.
"$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py \
    --junitxml="$DEST/test_cuda.xml" | tee "$DEST/test_cuda.txt"
"$PYTHON" - "$DEST/test_cuda.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
suite = ET.parse(sys.argv[1]).getroot()
suite = suite if suite.tag == "testsuite" else suite[0]
ran = int(suite.get("tests")) - int(suite.get("skipped"))
if ran == 0:
    sys.exit("Every CUDA test skipped: the GPU was not used.")
print(f"CUDA tests run: {ran}, failures {suite.get('failures')}, errors {suite.get('errors')}")
PY

# One demo round (the README's unattended round) on the GPU, profiled stage by stage.
"$PYTHON" bench/round_profile.py --label gpu --out "$DEST" | tee "$DEST/round_profile.txt"
echo "GPU check done: $DEST"
