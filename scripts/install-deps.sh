#!/usr/bin/env bash
# Installs what juris needs beyond a Rust toolchain, only when it is missing:
#   - the MeCab IPADIC dictionary sources (Debian package mecab-ipadic), from which juris
#     builds its Japanese morphological dictionary at first use (analyzer ja-ipadic).
# As root it installs the package; otherwise it unpacks the package into ~/.cache/juris and
# prints the JURIS_IPADIC_DIR to export. Safe to run repeatedly.
set -euo pipefail

ipadic_ok() { [ -f "${1}/Noun.csv" ] && [ -f "${1}/matrix.def" ]; }

if [ -n "${JURIS_IPADIC_DIR:-}" ] && ipadic_ok "$JURIS_IPADIC_DIR"; then exit 0; fi
if ipadic_ok /usr/share/mecab/dic/ipadic; then exit 0; fi

cache="${XDG_CACHE_HOME:-$HOME/.cache}/juris"
if ipadic_ok "$cache/mecab-ipadic/usr/share/mecab/dic/ipadic"; then exit 0; fi

echo "install-deps: fetching Debian's mecab-ipadic (dictionary sources for ja-ipadic)" >&2
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mecab-ipadic >/dev/null
else
  mkdir -p "$cache/deb"
  (cd "$cache/deb" && apt-get download mecab-ipadic >/dev/null)
  dpkg -x "$cache"/deb/mecab-ipadic_*.deb "$cache/mecab-ipadic"
  echo "install-deps: unpacked into $cache/mecab-ipadic (juris looks there too)" >&2
fi
