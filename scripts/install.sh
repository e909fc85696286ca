#!/usr/bin/env bash
# The one install path of napari-diffseg (used by scripts/demo.sh, .ci/run and the README):
# system libraries for Qt under Xvfb, a virtualenv at .venv, CPU torch, then the package with its
# Qt and test extras (editable). Non-interactive; needs Debian/Ubuntu with apt and Python >= 3.11.
#
# Environment:
#   PYTHON=python3.12        interpreter used to create .venv (default: python3)
#   DIFFSEG_SKIP_APT=1       skip the apt-get step (libraries already installed, or no root/sudo)
#   DIFFSEG_TORCH_INDEX=URL  the pip index for torch. Default: on Linux without an NVIDIA GPU (no nvidia-smi),
#                            PyTorch's CPU-only index (PyPI serves the multi-GB CUDA build there), falling back
#                            to the default index with a note when that index cannot be reached; elsewhere the
#                            default index. DIFFSEG_TORCH_INDEX=default forces the default index.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
TORCH_INDEX="${DIFFSEG_TORCH_INDEX:-}"
CPU_TORCH_INDEX="https://download.pytorch.org/whl/cpu"
if [[ -z "$TORCH_INDEX" && "$(uname -s)" == "Linux" ]] && ! command -v nvidia-smi >/dev/null 2>&1; then
    TORCH_INDEX="$CPU_TORCH_INDEX"
fi
if [[ "$TORCH_INDEX" == "default" ]]; then
    TORCH_INDEX=""
fi
TORCH_SPEC="torch>=2.2,<2.14"

if [[ "${DIFFSEG_SKIP_APT:-0}" != "1" ]]; then
    SUDO=""
    if [[ "$(id -u)" -ne 0 ]]; then
        SUDO="sudo"
    fi
    echo "== apt: python3-venv, Xvfb and the Qt/OpenGL libraries"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update
    # Qt's xcb platform plugin (PyQt6 wheels; libxcb-cursor0 since Qt 6.5) and vispy's OpenGL need these under Xvfb.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y \
        python3 python3-venv ca-certificates \
        xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 libxcb-render-util0 \
        libxkbcommon-x11-0 libxcb-cursor0 libgl1 libegl1 \
        libxcb-randr0 libxcb-shape0 libxcb-xfixes0 libxcb-sync1 libx11-xcb1 \
        libfontconfig1 libglib2.0-0 libdbus-1-3
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: napari-diffseg needs Python >= 3.11, but $PYTHON is $("$PYTHON" -V 2>&1);" \
         "install a newer Python and rerun with PYTHON=python3.11 (or newer)" >&2
    exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
    echo "== creating .venv with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --upgrade pip
echo "== torch ($TORCH_SPEC)"
if [[ -n "$TORCH_INDEX" ]]; then
    if ! .venv/bin/python -m pip install --timeout 20 --retries 1 --index-url "$TORCH_INDEX" "$TORCH_SPEC"; then
        echo "note: the torch index $TORCH_INDEX could not be used; installing torch from the default index" \
             "(on Linux that can be the multi-GB CUDA build; set DIFFSEG_TORCH_INDEX to a reachable CPU index)" >&2
        .venv/bin/python -m pip install "$TORCH_SPEC"
    fi
else
    .venv/bin/python -m pip install "$TORCH_SPEC"
fi
echo "== napari-diffseg (editable) with Qt, OpenVINO (fast prediction on a CPU) and test extras"
.venv/bin/python -m pip install -e ".[qt,openvino,testing]"
echo "== installed: $(.venv/bin/python -c 'import torch, napari, napari_diffseg; print(f"napari-diffseg {napari_diffseg.__version__}, torch {torch.__version__}, napari {napari.__version__}")')"
