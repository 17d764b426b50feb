#!/bin/sh
# Retrain the starter personas from their specs, one after another, and write each one's sidecar
# (personas/NAME.json: held-out evaluation and training record). Each run takes minutes on a
# laptop CPU. With names, only those:   personas/train_all.sh hamlet lear
#
# The runs go into a scratch library (PERSONA_TRAIN_LIBRARY, default a new temporary file) so the
# user's own library is left alone; the prompts are written to personas/NAME.safetensors.
# A failed persona does not stop the others; the script then exits non-zero, naming it.
set -u
cd "$(dirname "$0")/.."
PERSONA="${PERSONA:-.venv/bin/persona}"
PYTHON="${PYTHON:-.venv/bin/python}"
LIBRARY="${PERSONA_TRAIN_LIBRARY:-$(mktemp -d)/library.db}"
export PERSONA_NO_STARTERS=1   # the scratch library starts empty
if [ "$#" -eq 0 ]; then
  set -- $(for spec in personas/*.toml; do basename "$spec" .toml; done)
fi
failed=""
for name in "$@"; do
  echo "== $name ($(date +%T))"
  if "$PERSONA" train --spec "personas/$name.toml" --library "$LIBRARY" --quiet &&
     "$PYTHON" -m persona.train.sidecar "personas/$name.toml" --library "$LIBRARY"; then
    :
  else
    failed="$failed $name"
  fi
done
if [ -n "$failed" ]; then
  echo "failed:$failed" >&2
  exit 1
fi
