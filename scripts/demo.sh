#!/usr/bin/env bash
# Headless demo on the bundled DSB2018 sample (12 training images of which 3 labelled, 6 test images):
# install (scripts/install.sh), train for a 120 s budget, predict the test images, score them.
# Outputs go to runs/demo (model) and runs/demo/pred (masks).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ "${DIFFSEG_SKIP_INSTALL:-0}" != "1" ]] && ! .venv/bin/python -c "import napari_diffseg, torch" 2>/dev/null; then
    bash scripts/install.sh  # skipped when .venv is ready
fi

DIFFSEG=.venv/bin/diffseg
"$DIFFSEG" train sample_data/train/images --labels sample_data/train/labels --out runs/demo --budget 120
"$DIFFSEG" predict runs/demo sample_data/test/images --out runs/demo/pred
"$DIFFSEG" eval runs/demo/pred sample_data/test/masks
