#!/usr/bin/env bash
# Runs every benchmark once with bounded iteration counts and keeps the raw
# output, with the machine and the date, under docs/bench/. The curated
# tables (ratios to the baselines measured in the same run) live in
# docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/bench/$(date -u +%Y-%m-%d).txt
mkdir -p docs/bench
{
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm)"
  echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) x $(nproc), mem: $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "# go: $(go version)"
} >"$out"
CI=${CI:-} go test -run '^$' -bench . -benchmem -benchtime "${BENCHTIME:-20x}" -timeout 30m ./... 2>&1 | tee -a "$out"
echo "raw results written to $out"
