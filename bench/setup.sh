#!/usr/bin/env bash
# Installs what `npm run bench` uses beyond the main install: the load
# generators h2load (nghttp2-client) and wrk from Debian, and the LangGraph.js
# peer into bench/peer/ (its own package.json, so the main install stays lean).
# Without them the benchmark still runs and reports those rows unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
  else
    sudo apt-get update -qq
    sudo apt-get install -y -qq "${missing[@]}"
  fi
fi

npm ci --prefix bench/peer --no-audit --no-fund
