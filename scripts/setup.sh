#!/usr/bin/env bash
# Installs, from Debian's packages, what building, running and testing Wrenn
# needs. Idempotent: quiet and fast when everything is present.
set -euo pipefail

packages=(
  # services the platform and its tests run
  postgresql redis-server
  # the VMM and disk tooling
  qemu-system-x86 qemu-utils e2fsprogs xfsprogs
  # sandbox networking
  iproute2 nftables
  # the minimal root filesystem; the base template (Debian, by mmdebstrap)
  busybox-static bash-static ca-certificates mmdebstrap
  # the microVM kernel build (from Debian's kernel source)
  linux-source-6.1 build-essential bc bison flex libelf-dev cpio xz-utils
  # protobuf code generation (protoc and the well-known types)
  protobuf-compiler libprotobuf-dev
  # front-end assets and the E2B SDK compatibility test
  nodejs npm
  # headless browser for the /docs page test
  chromium
  # misc tools used by scripts and tests
  git curl procps psmisc
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
# Node may come from elsewhere than Debian; accept any node/npm on PATH.
if command -v node >/dev/null && command -v npm >/dev/null; then
  filtered=()
  for p in "${missing[@]}"; do [[ "$p" == nodejs || "$p" == npm ]] || filtered+=("$p"); done
  missing=("${filtered[@]}")
fi
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "setup: these packages are missing and apt-get is not available: ${missing[*]}" >&2
  echo "setup: Wrenn's set-up supports Debian (12 or newer); install them by hand." >&2
  exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "setup: these Debian packages are missing: ${missing[*]}" >&2
  echo "setup: run as root (sudo make ...) so they can be installed, or install them yourself." >&2
  exit 1
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
