#!/usr/bin/env bash
# Screenshots of the napari plugin for the README: runs scripts/screenshots.py in a real napari window on a
# virtual X display (Xvfb, 1600x1000) and writes docs/screenshots/NN_<step>.png. Arguments are passed on
# (e.g. --budget 60). Needs the install of scripts/install.sh (or any Python with napari-diffseg[qt]).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=python
if [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
fi
export QT_QPA_PLATFORM=xcb
exec xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" scripts/screenshots.py "$@"
