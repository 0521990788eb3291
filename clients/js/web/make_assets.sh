#!/bin/sh
# The page's local files: onnxruntime-web's module and wasm (web/vendor/) and the demo's assets (DIR, default
# web/demo/): the demo bundle and the new scanner's scans (edgelora demo --save-data), and as the training kit
# the recipe the device chooses on those scans by cross-validation (edgelora finetune, then kit --recipe-of).
#   sh clients/js/web/make_assets.sh [DIR]      (EDGELORA: the edgelora command, default `edgelora`)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/demo}
EDGELORA=${EDGELORA:-edgelora}
node "$here/setup.mjs"
$EDGELORA demo --no-plot --save-data "$dir"
$EDGELORA finetune "$dir/bundle" --data "$dir/finetune.npz" --out "$dir/adapter_numpy" --form skip --tap-scaling none
$EDGELORA kit "$dir/bundle" --out "$dir/kit" --recipe-of "$dir/adapter_numpy"
