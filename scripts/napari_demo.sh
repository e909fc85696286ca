#!/usr/bin/env bash
# The napari demo: install (scripts/install.sh), then start napari with the bundled DSB2018 sample open and the
# five DiffSeg panels docked (Project, Annotate, Train, Review, Predict) via scripts/open_napari.py.
# Arguments are passed on, e.g. `--project runs/napari_project` opens that project (created from the sample
# if the folder is new). Needs a display (a desktop session, or `xvfb-run -a` for a virtual one).
# The install step is skipped when .venv already has the package (DIFFSEG_SKIP_INSTALL=1 always skips it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ "$(uname -s)" == "Linux" && -z "${DISPLAY:-}" && -z "${WAYLAND_DISPLAY:-}" ]]; then
    echo "error: no display (DISPLAY is not set): napari needs a desktop session." >&2
    echo "       Use 'xvfb-run -a bash scripts/napari_demo.sh' for a virtual one, or 'bash scripts/demo.sh' for the" >&2
    echo "       headless demo of the same method on the same sample." >&2
    exit 1
fi
if [[ "${DIFFSEG_SKIP_INSTALL:-0}" != "1" ]] && ! .venv/bin/python -c "import napari_diffseg, napari, torch" 2>/dev/null; then
    bash scripts/install.sh
fi
exec .venv/bin/python scripts/open_napari.py "$@"
