#!/usr/bin/env bash
# Try persona's character cards in a real SillyTavern, without a browser: install SillyTavern from
# its source and npm, import the card `persona export --format card` wrote through SillyTavern's own
# import endpoint, read it back as SillyTavern stored it, list the models of `persona serve` through
# SillyTavern's Custom (OpenAI-compatible) source, and generate a reply through it with the prompt
# built from the imported card. Not part of `make test`: it downloads SillyTavern's npm
# dependencies (hundreds of MB) and loads the real model.
#
# Usage: scripts/sillytavern-try.sh [SILLYTAVERN_GIT]
#   SILLYTAVERN_GIT  a SillyTavern git repository (path or URL) or a checked-out source folder
#                    (default https://github.com/SillyTavern/SillyTavern, its release branch)
# Environment: PYTHON (default .venv/bin/python), PERSONA_MODEL (default: the embedded model),
#   CARD (the card to import into persona first; default tests/fixtures/cards/aichar_v1.png),
#   WORK (default: a new temporary folder), KEEP=1 keeps WORK afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
SOURCE="${1:-https://github.com/SillyTavern/SillyTavern}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
CARD="${CARD:-$REPO/tests/fixtures/cards/aichar_v1.png}"
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"
PERSONA_PORT="${PERSONA_PORT:-8471}"
ST_PORT="${ST_PORT:-8472}"
export PERSONA_HOME="$WORK/persona-home"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; else echo "kept $WORK"; fi
}
trap cleanup EXIT
step() { echo; echo "== $*"; }
wait_for() {  # URL SECONDS: until it answers
  for _ in $(seq "$2"); do curl -sf -o /dev/null "$1" && return 0; sleep 1; done
  echo "no answer from $1 after $2 s" >&2
  return 1
}

step "SillyTavern from $SOURCE"
if [ -f "$SOURCE/package.json" ]; then  # a checked-out work tree
  cp -r "$SOURCE" "$WORK/st"
elif [ -d "$SOURCE" ]; then
  git clone --quiet "$SOURCE" "$WORK/st"
  git -C "$WORK/st" log -1 --format='%h %cd %s'
else
  git clone --quiet --depth 1 --branch release "$SOURCE" "$WORK/st"
  git -C "$WORK/st" log -1 --format='%h %cd %s'
fi
(cd "$WORK/st" && npm ci --no-audit --no-fund --omit=dev --loglevel=error)
echo "SillyTavern $(node -p "require('$WORK/st/package.json').version")"

step "persona: import $CARD, export it as a card"
"$PYTHON" -m persona import "$CARD"
name=$("$PYTHON" - "$CARD" <<'EOF'
import sys
from persona.formats.card_files import read_card
print(read_card(sys.argv[1]).name.strip())
EOF
)
"$PYTHON" -m persona export "$name" "$WORK/exported.png" --format card
"$PYTHON" -m persona show "$name"

step "persona serve on 127.0.0.1:$PERSONA_PORT"
"$PYTHON" -m persona serve --port "$PERSONA_PORT" >"$WORK/serve.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$PERSONA_PORT/v1/models" 300

step "SillyTavern on 127.0.0.1:$ST_PORT"
(cd "$WORK/st" && exec node server.js --port "$ST_PORT" --listen false --autorun false \
  --dataRoot "$WORK/st-data" >"$WORK/st.log" 2>&1) &
pids+=($!)
wait_for "http://127.0.0.1:$ST_PORT/csrf-token" 180
jar="$WORK/cookies"
token=$(curl -sf -c "$jar" -b "$jar" "http://127.0.0.1:$ST_PORT/csrf-token" |
  "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["token"])')
st() {  # PATH [curl args...]: a request to SillyTavern with its session and CSRF token
  local path="$1"; shift
  curl -sS -c "$jar" -b "$jar" -H "X-CSRF-Token: $token" "http://127.0.0.1:$ST_PORT$path" "$@"
}

step "SillyTavern imports the card (its /api/characters/import, as its import button does)"
imported=$(st /api/characters/import -F "avatar=@$WORK/exported.png;type=image/png" -F file_type=png)
echo "$imported"
avatar=$(echo "$imported" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["file_name"] + ".png")')
st /api/characters/get -H 'Content-Type: application/json' -d "{\"avatar_url\": \"$avatar\"}" >"$WORK/st-card.json"
"$PYTHON" - "$WORK/st-card.json" "$WORK/exported.png" <<'EOF'
import json, sys
from persona.formats.card_files import read_card
stored = json.load(open(sys.argv[1]))
ours = read_card(sys.argv[2])
data = stored.get("data", stored)
for field in ("name", "description", "personality", "scenario", "first_mes", "mes_example"):
    same = data.get(field) == getattr(ours, field)
    print(f"  {field:<12} {'same' if same else 'DIFFERENT'}: {str(data.get(field))[:70]!r}")
print("  extensions.persona:", json.dumps(data.get("extensions", {}).get("persona")))
EOF

model=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"]["extensions"]["persona"]["model"])' "$WORK/st-card.json")
custom="http://127.0.0.1:$PERSONA_PORT/v1"

step "SillyTavern lists persona serve's models (Chat Completion, Custom source)"
st /api/backends/chat-completions/status -H 'Content-Type: application/json' \
  -d "{\"chat_completion_source\": \"custom\", \"custom_url\": \"$custom\"}" |
  "$PYTHON" -c 'import json,sys; print("  models:", [m["id"] for m in json.load(sys.stdin).get("data", [])])'

step "SillyTavern generates a reply from $model through persona serve"
"$PYTHON" - "$WORK/st-card.json" "$model" "$custom" >"$WORK/generate.json" <<'EOF'
import json, sys
card, model, custom = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
data = card.get("data", card)
name = data["name"]
fill = lambda text: text.replace("{{char}}", name).replace("{{user}}", "User")
# the messages SillyTavern's default Chat Completion preset builds: main prompt, the card's
# description, personality and scenario as system text, the greeting, then the user's turn
system = [
    "Write {{char}}'s next reply in a fictional chat between {{char}} and {{user}}.",
    data.get("description", ""),
    f"{name}'s personality: {data.get('personality', '')}" if data.get("personality") else "",
    f"Scenario: {data.get('scenario', '')}" if data.get("scenario") else "",
]
messages = [{"role": "system", "content": fill(text)} for text in system if text]
messages += [
    {"role": "assistant", "content": fill(data.get("first_mes", ""))},
    {"role": "user", "content": "Who are you, and where are we going?"},
]
print(json.dumps({
    "chat_completion_source": "custom", "custom_url": custom, "model": model,
    "messages": messages, "stream": False, "max_tokens": 60, "temperature": 0.8,
    "top_p": 0.95, "presence_penalty": 0, "frequency_penalty": 0, "char_name": name,
    "user_name": "User",
}))
EOF
st /api/backends/chat-completions/generate -H 'Content-Type: application/json' \
  -d @"$WORK/generate.json" >"$WORK/reply.json"
"$PYTHON" -c '
import json, sys
reply = json.load(open(sys.argv[1]))
if "choices" not in reply:
    sys.exit(f"no reply: {json.dumps(reply)[:300]}")
print("  reply:", reply["choices"][0]["message"]["content"])
print("  model:", reply.get("model"))' "$WORK/reply.json"
echo
echo "sillytavern-try: done"
