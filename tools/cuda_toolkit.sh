#!/usr/bin/env bash
# tools/cuda_toolkit.sh PYTHON CACHE_DIR: print the CUDA_HOME that compiles extensions for PYTHON's torch (setup.sh
# builds mmcv's CUDA ops with it); what it chose goes to stderr.
#
# torch's extension builder refuses an nvcc whose major version differs from torch.version.cuda, and cluster nodes
# often carry another toolkit, or none. So: the toolkit torch itself finds (CUDA_HOME / CUDA_PATH, else nvcc on
# PATH, else /usr/local/cuda) is used when its nvcc has torch's major version and its headers are there; otherwise
# nvcc, its compiler parts and the CUDA runtime headers come from the package index at the versions torch's own
# `cuda-toolkit` requirement pins (nvidia-cuda-nvcc, -crt, -cccl, -runtime, -culibos, nvidia-nvvm: ~270 MB),
# installed once into CACHE_DIR/cuda-toolkit-<version>. The headers of the libraries torch links (cuBLAS,
# cuSPARSE, cuSOLVER, ...) are those of the nvidia-* wheels torch already installed: setup.sh puts them on CPATH.
set -euo pipefail
PYTHON=$1
CACHE_DIR=$2

torch_cuda=$("$PYTHON" -c "import torch; print(torch.version.cuda or '')")
if [ -z "$torch_cuda" ]; then
    echo "error: this torch ($("$PYTHON" -c 'import torch; print(torch.__version__)')) is a CPU-only build;" \
         "CUDA ops need a CUDA build of torch (requirements.txt pins one)" >&2
    exit 1
fi

nvcc_release() {  # "13.0" from `nvcc --version`, empty when it does not run
    "$1" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9.]*\),.*/\1/p'
}

home=$("$PYTHON" -c "from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or '')" 2>/dev/null)
release=$(nvcc_release "${home:-/nonexistent}/bin/nvcc")
if [ -n "$release" ] && [ "${release%%.*}" = "${torch_cuda%%.*}" ] && [ -f "$home/include/cuda_runtime.h" ]; then
    echo "CUDA toolkit: $home (nvcc $release; torch built with CUDA $torch_cuda)" >&2
    echo "$home"
    exit 0
fi
if [ -n "$release" ] && [ "${release%%.*}" != "${torch_cuda%%.*}" ]; then
    echo "CUDA toolkit at $home not used: its nvcc is $release, torch is built with CUDA $torch_cuda" >&2
elif [ -n "$release" ]; then
    echo "CUDA toolkit at $home not used: no include/cuda_runtime.h there" >&2
fi

# the versions torch pins through its `cuda-toolkit[...]` requirement, for the compiler's extras
requirements=$("$PYTHON" - <<'PY'
import importlib.metadata as metadata
import sys

from packaging.requirements import Requirement

try:
    requires = metadata.requires('cuda-toolkit') or []
except metadata.PackageNotFoundError:
    sys.exit("error: torch's cuda-toolkit package is not installed, so the nvcc version to fetch is unknown; "
             'install a CUDA toolkit matching torch.version.cuda and set CUDA_HOME')
compiler = ('nvcc', 'crt', 'nvvm', 'cccl', 'cudart', 'culibos')
pins = {f'{r.name}{r.specifier}' for r in map(Requirement, requires)
        if r.marker and not r.marker.evaluate({'extra': ''}) and any(r.marker.evaluate({'extra': e}) for e in compiler)}
print(' '.join(sorted(pins)))
PY
)
version=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('cuda-toolkit'))")
toolkit="$CACHE_DIR/cuda-toolkit-$version"
if [ ! -d "$toolkit" ]; then
    echo "Fetching nvcc for CUDA $torch_cuda from the package index: $requirements" >&2
    # into a temporary folder, then renamed: an interrupted fetch never leaves a partial toolkit behind
    mkdir -p "$CACHE_DIR"
    partial=$(mktemp -d "$CACHE_DIR/cuda-toolkit-$version.XXXXXX")
    # shellcheck disable=SC2086  # one argument per requirement
    "$PYTHON" -m pip --disable-pip-version-check install --quiet --no-deps --target "$partial" $requirements >&2
    mv "$partial" "$toolkit"
fi
home=$(dirname "$(dirname "$(ls "$toolkit"/nvidia/*/bin/nvcc | head -n 1)")")
# torch links -lcudart; the runtime wheel ships only the versioned library
[ -e "$home/lib/libcudart.so" ] || ln -s "$(basename "$(ls "$home"/lib/libcudart.so.* | head -n 1)")" \
                                         "$home/lib/libcudart.so"
echo "CUDA toolkit: $home (nvcc $(nvcc_release "$home/bin/nvcc") from the package index;" \
     "torch built with CUDA $torch_cuda)" >&2
echo "$home"
