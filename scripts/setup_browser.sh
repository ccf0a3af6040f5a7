#!/usr/bin/env bash
# Install the browser the tests in tests/browser drive: Debian's chromium package.
#
# Playwright is pointed at /usr/bin/chromium; it never downloads a browser of its
# own. Where chromium cannot be installed (no root, no apt), this says so and exits
# 0: the browser tests then skip with that reason.
set -uo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [[ -x "$CHROMIUM" ]]; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "setup_browser: $CHROMIUM missing and apt-get unavailable as root; browser tests will skip" >&2
  exit 0
fi
echo "setup_browser: installing chromium (apt)" >&2
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null; then
  echo "setup_browser: apt-get install chromium failed; browser tests will skip" >&2
fi
exit 0
