#!/usr/bin/env bash
# Developer convenience: build .dev/ssmpose, a tree of symlinks that mirrors the installed package layout
# (ssmpose/ -> ssmpose, training/ -> ssmpose.training, ...), so that PYTHONPATH=.dev imports the working tree
# without reinstalling. Compiled kernels are looked up in build/ or $SSMPOSE_KERNELS_DIR.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$root/.dev"; mkdir -p "$root/.dev/ssmpose"
for f in "$root"/ssmpose/*; do ln -s "$f" "$root/.dev/ssmpose/$(basename "$f")"; done
for d in training export custom_ops runtimes cli; do ln -s "$root/$d" "$root/.dev/ssmpose/$d"; done
echo "export PYTHONPATH=$root/.dev"
