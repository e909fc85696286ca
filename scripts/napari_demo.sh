#!/usr/bin/env bash
# The napari demo: install (scripts/install.sh), then start napari with the bundled DSB2018 sample open and the
# five DiffSeg panels docked (Project, Annotate, Train, Review, Predict) via scripts/open_napari.py.
# Arguments are passed on, e.g. `--project runs/napari_project` opens that project (created from the sample
# if the folder is new). Needs a display (a desktop session, or `xvfb-run -a` for a virtual one).
# DIFFSEG_SKIP_INSTALL=1 skips the install step when .venv is already set up.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ "${DIFFSEG_SKIP_INSTALL:-0}" != "1" ]]; then
    bash scripts/install.sh
fi
exec .venv/bin/python scripts/open_napari.py "$@"
