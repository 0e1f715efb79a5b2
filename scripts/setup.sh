#!/usr/bin/env bash
# Install everything lrdnb needs on a fresh machine: system data/browser (where apt is
# available), a virtualenv with torch + torchvision, lrdnb with its notebook and test extras.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh [VENV_DIR]
set -euo pipefail
VENV=${1:-.venv}
PY=${PYTHON:-python3}

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=()
  [ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  if ((${#need[@]})); then
    echo "[setup] apt-get install ${need[*]}"
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null || \
      echo "[setup] WARNING: could not install ${need[*]} (Fashion-MNIST runs and the browser test will be skipped or fail with a message)"
  fi
else
  echo "[setup] no root apt: install Debian's dataset-fashion-mnist and chromium yourself for the full test suite"
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing torch + torchvision (large: ~5.5 GB, a few minutes)"
  "$VENV/bin/pip" install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import torch, torchvision" # fail loudly if it did not work
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -e ".[notebooks,test]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import lrdnb, papermill, ipywidgets, pytest"
echo "[setup] ok: $("$VENV/bin/python" -c 'import torch, lrdnb; print("torch", torch.__version__, "| lrdnb", lrdnb.__version__)')"
