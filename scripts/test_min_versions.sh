#!/usr/bin/env bash
# The test suite at the lowest dependency versions pyproject.toml allows (numpy>=1.24, scipy>=1.10,
# threadpoolctl>=3, optuna>=4.0, optuna-dashboard>=0.20, plotly>=5), in a venv under /tmp, without torch
# (the torch tests skip). The pins go in as a pip constraints file, so the resolver cannot move them;
# the test tools take whatever versions fit around them. Python defaults to python3:
#   bash scripts/test_min_versions.sh [/root/.pyenv/versions/3.10.13/bin/python]
# Any pin can be overridden, e.g. the common numpy<2 stack in its own venv:
#   VENV=/tmp/optlaws-venv-np126 NUMPY=1.26.4 SCIPY=1.11.4 bash scripts/test_min_versions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
py=${1:-python3}
venv=${VENV:-/tmp/optlaws-venv-min}
constraints="$venv/min-constraints.txt"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
cat > "$constraints" <<EOF
numpy==${NUMPY:-1.24.0}
scipy==${SCIPY:-1.10.0}
threadpoolctl==${THREADPOOLCTL:-3.0.0}
optuna==${OPTUNA:-4.0.0}
optuna-dashboard==${OPTUNA_DASHBOARD:-0.20.0}
plotly==${PLOTLY:-5.0.0}
optuna-integration==${OPTUNA_INTEGRATION:-4.0.0}
EOF
"$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$constraints" numpy scipy threadpoolctl \
  optuna optuna-dashboard plotly optuna-integration pytest matplotlib psycopg2-binary selenium
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$root"
echo "== $("$venv/bin/python" --version)"
"$venv/bin/python" -m pip freeze | grep -i -E 'numpy|scipy|optuna|plotly|threadpool'
cd /tmp && OPENBLAS_NUM_THREADS=1 nice "$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/tests"
