#!/usr/bin/env bash
# The test suite on other Python versions, each in its own venv under /tmp, without torch
# (its CPU wheel on these machines is for the main interpreter; the torch tests skip):
#   bash scripts/test_other_pythons.sh /root/.pyenv/versions/3.10.13/bin/python /root/.pyenv/versions/3.13.0/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
for py in "$@"; do
  venv="/tmp/optlaws-venv-$("$py" -c "import sys; print('%d.%d' % sys.version_info[:2])")"
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check numpy scipy threadpoolctl optuna \
    optuna-dashboard plotly optuna-integration pytest matplotlib psycopg2-binary selenium grpcio protobuf
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$root"
  echo "== $("$venv/bin/python" --version)"
  (cd /tmp && OPENBLAS_NUM_THREADS=1 "$venv/bin/python" -m pytest -q -rfE -p no:cacheprovider "$root/tests" \
    | grep -E "^(FAILED|ERROR) | passed| failed| error")
done
