#!/usr/bin/env bash
# Idempotent set-up: Debian packages, the project venv (torch first), the Label Studio venv, the moto venv.
# Quick when already done: each step checks before it installs. Called by `make setup`.
set -euo pipefail

PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}
VENV=${VENV:-.venv}
LS_VENV=${LS_VENV:-.venv-ls}
LS_VERSION=${LS_VERSION:-1.23.2}
WITH_LABEL_STUDIO=${WITH_LABEL_STUDIO:-1}
MOTO_VENV=${MOTO_VENV:-.venv-moto}
MOTO_SPEC=${MOTO_SPEC:-moto[server]==5.2.5}
WITH_MOTO=${WITH_MOTO:-1}

# Headless EGL rendering (pyrender on Mesa's software renderer) needs the GL libraries; the demo's test
# opens the HTML report in headless Chromium.
APT_PACKAGES=(libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libopengl0 chromium)

# pip repeats a harmless warning for every package about local index folders this machine lacks.
quiet_pip() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages: ${missing[*]}" >&2
    echo "setup: install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

# The stamp holds a hash of everything that decides the venv's contents.
stamp_of() { cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16; echo "$TORCH"; }
want="$(stamp_of)"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.hv-stamp" 2>/dev/null)" != "$want" ]; then
  # torch first: anything that depends on it would otherwise resolve a multi-GB CUDA build.
  quiet_pip "$VENV/bin/pip" install -q --upgrade pip
  quiet_pip "$VENV/bin/pip" install -q "$TORCH"
  quiet_pip "$VENV/bin/pip" install -q -e '.[dev]'
  echo "$want" > "$VENV/.hv-stamp"
  echo "setup: $VENV ready"
fi

# Label Studio is an application with its own pins (pyarrow<25, old dateutil): its own venv.
if [ "$WITH_LABEL_STUDIO" = "1" ] && [ "$(cat "$LS_VENV/.hv-stamp" 2>/dev/null)" != "$LS_VERSION" ]; then
  echo "setup: creating $LS_VENV (label-studio==$LS_VERSION)"
  [ -x "$LS_VENV/bin/python" ] || "$PYTHON" -m venv "$LS_VENV"
  quiet_pip "$LS_VENV/bin/pip" install -q --upgrade pip
  quiet_pip "$LS_VENV/bin/pip" install -q "label-studio==$LS_VERSION"
  echo "$LS_VERSION" > "$LS_VENV/.hv-stamp"
  echo "setup: $LS_VENV ready"
fi

# A local S3 server (moto_server) for the object-storage tests of `hv curate --out s3://...`: its own venv, so
# its dependencies (boto3, Flask, pydantic, ...) do not move the project's pins.
if [ "$WITH_MOTO" = "1" ] && [ "$(cat "$MOTO_VENV/.hv-stamp" 2>/dev/null)" != "$MOTO_SPEC" ]; then
  echo "setup: creating $MOTO_VENV ($MOTO_SPEC)"
  [ -x "$MOTO_VENV/bin/python" ] || "$PYTHON" -m venv "$MOTO_VENV"
  quiet_pip "$MOTO_VENV/bin/pip" install -q --upgrade pip
  quiet_pip "$MOTO_VENV/bin/pip" install -q "$MOTO_SPEC"
  echo "$MOTO_SPEC" > "$MOTO_VENV/.hv-stamp"
  echo "setup: $MOTO_VENV ready"
fi
