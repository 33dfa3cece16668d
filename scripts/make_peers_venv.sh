#!/usr/bin/env bash
# The peers' own environment for benchmarks/peers.py: OpenVINO (+NNCF), ONNX Runtime and CTranslate2 from PyPI,
# never the product's dependencies. torch, transformers and sentence-transformers are read from the product's
# venv through a .pth file (appended after this venv's own site-packages, so a peer's pin wins here only).
set -euo pipefail
PRODUCT_PY=${1:-.venv/bin/python}
PEERS=${2:-benchmarks/.peers-venv}
test -x "$PEERS/bin/python" || "$PRODUCT_PY" -m venv --without-pip "$PEERS" 2>/dev/null || "$PRODUCT_PY" -m venv "$PEERS"
test -x "$PEERS/bin/pip" || "$PEERS/bin/python" -m ensurepip --default-pip >/dev/null
SITE=$("$PEERS/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$PRODUCT_PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$SITE/e5studio-product.pth"
"$PEERS/bin/python" -m pip install -q --upgrade pip
"$PEERS/bin/python" -m pip install -q openvino nncf onnxruntime ctranslate2
touch "$PEERS/.installed"
