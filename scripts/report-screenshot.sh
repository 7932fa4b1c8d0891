#!/usr/bin/env bash
# Renders a run's or a suite's report.html in headless Chromium and saves a screenshot next to
# it (report.png), to look at: the page must show its tables and plots with no network.
# Installs Chromium (Debian/Ubuntu) if it is missing. Not part of CI.
#
#   scripts/report-screenshot.sh RUN_OR_SUITE_DIR [WIDTHxHEIGHT]
set -euo pipefail
dir=${1:?usage: $0 RUN_OR_SUITE_DIR [WIDTHxHEIGHT]}
size=${2:-1200x3200}
page="$(cd "$dir" && pwd)/report.html"
[ -f "$page" ] || { echo "no report.html in $dir" >&2; exit 2; }
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
    echo "installing chromium (apt)" >&2
    sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_=sudo
    $sudo_ apt-get update -qq
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    browser=$(command -v chromium)
fi
out="$(dirname "$page")/report.png"
# No network at all: a page that needs one shows holes in the screenshot.
"$browser" --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
    --proxy-server=127.0.0.1:9 --proxy-bypass-list='<-loopback>' \
    --window-size="${size/x/,}" --screenshot="$out" "file://$page" 2>/dev/null
echo "screenshot: $out"
