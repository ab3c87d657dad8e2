#!/bin/sh
# The gateway's install, the same in the container (Dockerfile) and in the test
# of the lean install (tests/deploy/test_lean_install.py):
#
#     deploy/install-gateway.sh VENV WHEEL_DIR [EXTRAS]
#
# a fresh virtual environment at VENV with the dualpool wheel found in WHEEL_DIR
# (built by `pip wheel --no-deps -w WHEEL_DIR .`) and only the gateway's
# dependencies, plus EXTRAS (default: redis, for shared calibration).
# PYTHON chooses the interpreter (default: python3).
set -eu
venv="$1"
wheel_dir="$2"
extras="${3-redis}"
python="${PYTHON:-python3}"
wheel="$(ls "$wheel_dir"/dualpool-*.whl)"
"$python" -m venv "$venv"
if [ -n "$extras" ]; then
    target="dualpool[$extras] @ file://$wheel"
else
    target="dualpool @ file://$wheel"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "$target"
"$venv/bin/dualpool" serve --help >/dev/null
