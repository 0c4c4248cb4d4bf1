#!/usr/bin/env bash
# Install everything: torch (only if none is installed: a CUDA torch on a GPU box is never replaced;
# on a CPU box this takes torch==2.13.0), the package with its C++ kernels, test tools, and the
# Debian Chromium used by the viewer's browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install "torch==2.13.0"
fi
"$PY" -m pip install --upgrade "setuptools>=64" wheel ninja
"$PY" -m pip install --no-build-isolation -e ".[test]"
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "install.sh: could not install Debian chromium; the browser test will skip (fail under AVATAR_REQUIRE=browser)"
fi
