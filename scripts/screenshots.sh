#!/usr/bin/env bash
# Screenshots of the napari plugin for the README: runs scripts/screenshots.py in a real napari window on a virtual X
# display (Xvfb) at a laptop's 1280x800 and at 1920x1080, and writes docs/screenshots/<size>/NN_<step>.png.
# Arguments are passed on (e.g. --budget 60). Needs the install of scripts/install.sh (or any Python with
# napari-diffseg[qt]).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=python
if [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
fi
export QT_QPA_PLATFORM=xcb
for size in 1280x800 1920x1080; do
    xvfb-run -a -s "-screen 0 ${size}x24" "$PY" scripts/screenshots.py --size "$size" \
        --out "docs/screenshots/$size" "$@"
done
