# Sourced by the other scripts: create .venv (once) and install this project with the extras in $EXTRAS.
# torch is pinned (==2.13.0) in the [export] extra: on the project's machines pip takes its CPU build from disk.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${EXTRAS}]"
