#!/usr/bin/env bash
# Set up the project on a fresh machine in .venv, with the exact tested versions:
#   bash setup.sh              the model package and classification/ (requirements.txt): about a minute
#   bash setup.sh --openmmlab  + detection/ and segmentation/ (requirements-openmmlab.txt, mmcv 2.1.0 compiled
#                              with its ops: about 12 minutes on 2 cores the first time, then cached)
#   bash setup.sh --all        + the tests and the ONNX tools (requirements-dev.txt): what CI runs
#   --cuda (with either)       mmcv with CUDA ops even where torch sees no GPU (as it is built where torch sees one):
#                              for $TORCH_CUDA_ARCH_LIST, default the visible GPUs' or else 9.0 (H100); nvcc from
#                              the toolkit torch finds when its major version is torch's, else from the package index
#                              (tools/cuda_toolkit.sh); about 25 minutes on 2 cores for one architecture, then cached
# Re-running it is cheap: an existing .venv is reused and only what changed is installed.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
MMCV_VERSION=2.1.0

openmmlab=0
dev=0
cuda=0
for arg in "$@"; do
    case "$arg" in
        --openmmlab) openmmlab=1 ;;
        --all) openmmlab=1; dev=1 ;;
        --cuda) openmmlab=1; cuda=1 ;;
        *) echo "usage: bash setup.sh [--openmmlab | --all] [--cuda]" >&2; exit 2 ;;
    esac
done

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
requirements=(-r requirements.txt)
[ "$openmmlab" = 1 ] && requirements+=(-r requirements-openmmlab.txt)
[ "$dev" = 1 ] && requirements+=(-r requirements-dev.txt)
"${PIP[@]}" install --quiet "${requirements[@]}" -e .

if [ "$openmmlab" = 1 ]; then
    # mmcv 2.1.0 (what mmdet 3.3 and mmseg 1.2 accept) publishes no wheels for this torch, so it is compiled
    # here: CPU ops, plus CUDA ops when torch sees a GPU or with --cuda. The wheel is cached per torch, Python and
    # ops flavour ($SCALABLEVIT_CACHE, default ~/.cache/scalablevit); without the cache it is rebuilt (about 10
    # minutes on 2 cores, 25 with CUDA ops for one architecture).
    cache_root="${SCALABLEVIT_CACHE:-$HOME/.cache/scalablevit}"
    build_env=(MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}")
    if [ "$cuda" = 1 ] || "$VENV/bin/python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
        ops_check="from mmcv.ops import get_compiling_cuda_version as v; assert v() != 'not available'"
    else
        ops_check=""
    fi
    if ! "$VENV/bin/python" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'; $ops_check" \
            2>/dev/null; then
        ops=cpu
        if [ -n "$ops_check" ]; then
            cuda_home=$(bash tools/cuda_toolkit.sh "$VENV/bin/python" "$cache_root")
            arch=${TORCH_CUDA_ARCH_LIST:-$("$VENV/bin/python" -c "import torch
print(';'.join(sorted({'%d.%d' % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}))
      or '9.0')")}
            # the headers of the libraries torch links (cuBLAS, cuSPARSE, ...) from torch's nvidia-* wheels
            site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
            nvidia_include=$(ls -d "$site"/nvidia/*/include 2>/dev/null | paste -sd: -)
            build_env+=(FORCE_CUDA=1 CUDA_HOME="$cuda_home" TORCH_CUDA_ARCH_LIST="$arch"
                        CPATH="$nvidia_include${CPATH:+:$CPATH}")
            ops="cuda$("$VENV/bin/python" -c "import torch; print(torch.version.cuda)")-arch${arch//[; ]/_}"
            echo "mmcv's CUDA ops for architectures $arch with $cuda_home/bin/nvcc"
        fi
        flavour=$("$VENV/bin/python" -c "
import sys, torch
print(f'torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}-$ops')")
        cache="$cache_root/mmcv-$MMCV_VERSION-$flavour"
        wheel=$(ls "$cache"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
        if [ -z "$wheel" ]; then
            echo "Building mmcv $MMCV_VERSION with ops ($flavour); this takes a while ..."
            build_dir=$(mktemp -d)
            # --no-cache-dir: pip's own wheel cache ignores which torch a wheel was compiled against
            env "${build_env[@]}" "${PIP[@]}" wheel --quiet --no-cache-dir \
                --no-build-isolation --no-deps -w "$build_dir" "mmcv==$MMCV_VERSION"
            mkdir -p "$cache"
            built=$(ls "$build_dir"/mmcv-*.whl)
            # copy under a temporary name, then rename: an interrupted setup never leaves a partial wheel cached
            cp "$built" "$cache/$(basename "$built").part"
            mv "$cache/$(basename "$built").part" "$cache/$(basename "$built")"
            rm -rf "$build_dir"
            wheel="$cache/$(basename "$built")"
        fi
        "${PIP[@]}" install --quiet --no-deps --force-reinstall "$wheel"
    fi
fi

"$VENV/bin/python" - "$openmmlab" <<'PY'
import sys
import scalablevit, timm, torch
line = f'scalablevit {scalablevit.__version__}, timm {timm.__version__}, torch {torch.__version__}'
if sys.argv[1] == '1':
    import mmcv, mmcv.ops, mmdet, mmseg
    line += f', mmcv {mmcv.__version__} (ops), mmdet {mmdet.__version__}, mmseg {mmseg.__version__}'
print(f'{line}: ready')
PY
