#!/usr/bin/env bash
# The browser test drives Debian's chromium; install it when we can (root with apt), else say why it is skipped.
set -u
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's chromium for the browser test..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "note: could not install chromium; the browser test will be skipped"
else
  echo "note: /usr/bin/chromium missing and no root apt-get; the browser test will be skipped"
fi
exit 0
