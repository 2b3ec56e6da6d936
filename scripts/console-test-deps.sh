#!/usr/bin/env bash
# What the web console's browser tests need (tests/console_browser.rs), installed when missing:
# Debian's chromium and chromium-driver (driven over WebDriver), and axe-core from npm (the
# accessibility check), under .local/console/ (git-ignored). Prints nothing when all is there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
for p in chromium chromium-driver; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "console-test-deps: installing ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

AXE=.local/console/node_modules/axe-core/axe.min.js
if [ ! -f "$AXE" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "console-test-deps: installing npm"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  fi
  echo "console-test-deps: installing axe-core"
  mkdir -p .local/console
  npm install --silent --no-audit --no-fund --prefix .local/console axe-core@4 >/dev/null
fi
