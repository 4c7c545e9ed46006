#!/usr/bin/env bash
# One entry point that does all the set-up on a fresh machine:
#   ./webui.sh [studio options]   install if needed, then launch the studio
#   ./webui.sh test [pytest args] install if needed (test tools and chromium too), then run the tests
#   ./webui.sh generate ...       install if needed, then run one job headless
# The virtual environment lives in .venv. GPU users: create .venv and install your CUDA build of
# torch into it first (see README); an installed torch is never replaced.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
# A CPU build; with no torch installed, an open range would pull a several-GB CUDA build.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

install() {
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  local stamp="$VENV/.installed-$1" want
  want=$(cat pyproject.toml | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
  if [ "$1" = test ]; then
    # The cluster extra too, so the Ray Serve tests run (tests/test_cluster.py).
    "$VENV/bin/python" -m pip install -q -e ".[test,cluster]"
  else
    "$VENV/bin/python" -m pip install -q -e .
  fi
  echo "$want" > "$stamp"
}

find_chromium() {
  for c in /usr/lib/chromium/chromium /usr/bin/chromium /usr/bin/chromium-browser; do
    [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}

case "${1:-}" in
  test)
    shift
    install test
    if ! find_chromium >/dev/null; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
      else
        echo "the browser tests need chromium: install it (e.g. sudo apt-get install chromium)" >&2
        exit 1
      fi
    fi
    export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
    set +e
    "$VENV/bin/python" -m pytest -q "$@"
    code=$?
    # pytest's 5 means no test ran: that is a failure, not a pass.
    [ "$code" = 5 ] && echo "no tests were collected" >&2
    exit "$code"
    ;;
  *)
    install app
    exec "$VENV/bin/python" -m webui "$@"
    ;;
esac
