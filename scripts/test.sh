#!/usr/bin/env bash
# The whole test suite: formatting, vet, and every test with the race
# detector (fuzz targets run their seed corpora; system tests start real
# tsstore processes on loopback). Installs nothing outside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.tools/*'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

echo "== go test -race"
go test -race -count=1 -timeout 12m "$@" ./...
