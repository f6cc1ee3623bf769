# Sourced by the other scripts: create a virtual environment (once) and install this project into it
# with the extras in $EXTRAS. $VENV names the folder (default .venv).
# torch is pinned (==2.13.0) in the [export] extra: on the project's machines pip takes its CPU build from disk.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[${EXTRAS}]"
