#!/usr/bin/env bash
# flashinfer on the GPU machine used for benchmarks, which has no network and takes at
# most 64 MiB of files per call (flashinfer-python's wheel alone is 62 MB):
#
#   bash scripts/flashinfer_device.sh pack            here: .fi/flashinfer.tar.xz, the wheel without
#                                                     the CUDA sources of kernels rollserve never
#                                                     calls, and apache-tvm-ffi's wheel into .whl/
#   source scripts/flashinfer_device.sh unpack DIR    there: flashinfer importable from DIR, the
#                                                     modules compiled by earlier calls restored
#   bash scripts/flashinfer_device.sh save OUT_DIR    there: the modules this call compiled, into
#                                                     OUT_DIR/flashinfer_aot.tar.xz (copy it to .fi/)
#
# flashinfer compiles its kernels on first use (nvcc, ninja) into FLASHINFER_WORKSPACE_BASE;
# `save` keeps the .so files, and `unpack` puts them where flashinfer looks for prebuilt
# (AOT) modules, so a later call skips the minutes of compilation.
VERSION=0.7.2.post1
TVM_FFI=0.1.12

pack() {
    set -euo pipefail
    local work
    work=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$work" "flashinfer-python==$VERSION"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .whl "apache-tvm-ffi==$TVM_FFI"
    (cd "$work" && unzip -q flashinfer_python-*.whl 'flashinfer/*'
     find flashinfer/data/csrc -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +)
    mkdir -p .fi
    tar cJf .fi/flashinfer.tar.xz -C "$work" flashinfer
    rm -rf "$work"
    ls -la .fi/flashinfer.tar.xz
}

unpack() {
    local dir=$1
    mkdir -p "$dir"
    tar xJf .fi/flashinfer.tar.xz -C "$dir"
    if [ -f .fi/flashinfer_aot.tar.xz ]; then
        tar xJf .fi/flashinfer_aot.tar.xz -C "$dir/flashinfer/data"
    fi
    export PYTHONPATH="$dir:${PYTHONPATH:-}" FLASHINFER_WORKSPACE_BASE=/tmp/flashinfer_ws FLASHINFER_DIR=$dir
}

save() {  # the modules restored by unpack and those compiled since, one archive
    local out=$1 staged
    staged=$(mktemp -d)
    mkdir -p "$staged/aot"
    if [ -d "$FLASHINFER_DIR/flashinfer/data/aot" ]; then
        cp -r "$FLASHINFER_DIR/flashinfer/data/aot/." "$staged/aot/"
    fi
    find /tmp/flashinfer_ws -name '*.so' -path '*cached_ops*' | while read -r so; do
        name=$(basename "$so" .so)
        mkdir -p "$staged/aot/$name" && cp "$so" "$staged/aot/$name/"
    done
    tar cf - -C "$staged" aot | xz -T0 -6 > "$out/flashinfer_aot.tar.xz"
    find "$staged" -name '*.so' -exec ls -la {} +
    ls -la "$out/flashinfer_aot.tar.xz"
}

"$@"
