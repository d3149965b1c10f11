#!/bin/sh
# The Debian packages the tests point real tools at (a Prometheus server, a headless browser),
# one "command package" pair a line in tools/system-packages.txt. Installs what is missing when
# it can (root with apt-get, as CI runs); otherwise says what is missing, and the tests that
# need it skip with that reason.
set -eu
here=$(dirname "$0")
missing=""
while read -r command package; do
    case "$command" in ''|'#'*) continue ;; esac
    command -v "$command" >/dev/null 2>&1 || missing="$missing $package"
done < "$here/system-packages.txt"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
    echo "missing Debian packages (tests that need them will skip):$missing" >&2
fi
