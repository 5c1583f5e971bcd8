#!/usr/bin/env bash
# Headless Chromium for the dashboard test (Debian package). Idempotent; without root or apt-get it
# says so and the browser test skips with that reason.
set -uo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: chromium not installed and cannot apt-get it here; the dashboard browser test will skip" >&2
  exit 0
fi
echo "setup: installing chromium for the dashboard test"
apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
  || echo "setup: chromium install failed; the dashboard browser test will skip" >&2
exit 0
