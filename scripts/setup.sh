#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent and quick when already done.
#   bash scripts/setup.sh          the package, torch and the dev tools
#   bash scripts/setup.sh --test   also what the tests use: Debian's chromium (dashboard
#                                  in a real browser) and PostgreSQL (RDB storage)
# torch: an already installed torch (a CUDA build, say) is kept; otherwise torch==2.13.0,
# which on these machines is a CPU wheel on disk (seconds, no CUDA download).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi
if ! "$PY" -c "import optuna_optlaws, optuna, optuna_dashboard, optuna_integration, pytest, ruff, mypy, psycopg2, selenium, grpc" >/dev/null 2>&1 \
   || ! "$PY" -c "import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path('scripts'), 'optlaws')))"; then
  "$PY" -m pip install -q --disable-pip-version-check -e ".[dev]"
fi
if [ "${1:-}" = "--test" ]; then
  need=()
  command -v chromium >/dev/null 2>&1 || need+=(chromium chromium-driver)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") >/dev/null 2>&1 \
        || echo "setup: could not install ${need[*]}; the tests that need them will be skipped" >&2
    else
      echo "setup: ${need[*]} missing and not root; the tests that need them will be skipped" >&2
    fi
  fi
fi
