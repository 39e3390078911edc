#!/usr/bin/env bash
# Replaces the uPlot files here with those of another npm version: ./update.sh 1.6.32
# Needs npm (Debian's `npm`). Then set Version in uplot.go and the version and checksums in
# README.md, and look at the page (go test ./e2e -run TestWebUI) before committing.
set -euo pipefail
version=${1:?usage: $0 VERSION}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "uplot@$version" >/dev/null && tar xzf "uplot-$version.tgz")
cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" "$tmp/package/LICENSE" "$here/"
sed -i "s/^const Version = .*/const Version = \"$version\"/" "$here/uplot.go"
(cd "$here" && sha256sum uPlot.iife.min.js uPlot.min.css)
