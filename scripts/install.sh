#!/usr/bin/env bash
# Install everything: torch (only if none is installed: a CUDA torch on a GPU box is never replaced;
# on a CPU box this takes torch==2.13.0), the package with its C++ kernels, test tools, and the
# Debian Chromium and espeak-ng used by the browser and lip-sync tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install "torch==2.13.0"
fi
"$PY" -m pip install --upgrade "setuptools>=64" wheel ninja
"$PY" -m pip install --no-build-isolation -e ".[test]"
# Debian packages: Chromium (the viewer's browser test) and espeak-ng (synthetic voices in many languages for the
# lip-sync tests and bench/lipsync.py, issue 17)
APT=()
command -v chromium >/dev/null 2>&1 || APT+=(chromium chromium-driver)
command -v espeak-ng >/dev/null 2>&1 || APT+=(espeak-ng)
if [ ${#APT[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT[@]}" >/dev/null) \
    || echo "install.sh: could not install ${APT[*]}; the browser / TTS tests will skip (fail under AVATAR_REQUIRE=browser,tts)"
fi
