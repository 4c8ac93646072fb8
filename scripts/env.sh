# Sourced by the launchers: installs libtorch (from the PyPI wheel torch==2.11.0) into .deps/
# on first use and exports what tch's build needs. Only the CPU runtime's dependencies are
# installed: libtorch_cpu links libcudart and libcupti, nothing else of the CUDA stack.
FER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FER_PY="$FER_ROOT/.deps/py"
if [ ! -f "$FER_PY/torch/lib/libtorch_cpu.so" ]; then
    echo "fer: installing libtorch 2.11.0 (PyPI wheel torch==2.11.0) into .deps/ ..." >&2
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$FER_PY.partial" \
        torch==2.11.0 nvidia-cuda-runtime nvidia-cuda-cupti || return 1 2>/dev/null || exit 1
    rm -rf "$FER_PY" && mv "$FER_PY.partial" "$FER_PY"
fi
export LIBTORCH="$FER_PY/torch"
export LIBTORCH_CXX11_ABI=1
# Videos go through ffmpeg: install it where it is missing and we may (CI runs as root).
if ! command -v ffmpeg >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "fer: installing ffmpeg (Debian package, for videos) ..." >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg; } >/dev/null 2>&1 \
            || echo "fer: could not install ffmpeg: videos will not work" >&2
    else
        echo "fer: ffmpeg is missing, so videos will not work (sudo apt-get install ffmpeg)" >&2
    fi
fi
