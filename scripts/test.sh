#!/usr/bin/env bash
# The whole test suite: formatting, vet, every test with the race
# detector (fuzz targets run their seed corpora; system tests start real
# tsstore processes on loopback), then the jepsen short profile.
# Installs nothing outside the checkout: the pinned grpcurl goes to
# .tools/bin (git-ignored). The systemd unit test needs systemd-analyze
# (Debian: apt-get install systemd); it fails without it unless
# TSSTORE_NO_SYSTEMD=1.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.tools/*'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

# Pinned grpcurl for systemtest/grpcurl_test.go (server reflection).
GRPCURL_VERSION=v1.9.3
if ! go version -m .tools/bin/grpcurl 2>/dev/null | grep -q "mod[[:space:]]*github.com/fullstorydev/grpcurl[[:space:]]*$GRPCURL_VERSION"; then
  echo "== installing grpcurl $GRPCURL_VERSION into .tools/bin"
  GOBIN="$PWD/.tools/bin" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
fi

echo "== go test -race"
go test -race -count=1 -timeout 12m "$@" ./...

# The jepsen short profile: every fault-injection scenario for ~35 s
# against real processes (docs/jepsen.md). TSSTORE_JEPSEN=0 skips it;
# JEPSEN_SEED reproduces a run. Results are kept only if it fails.
if [ "${TSSTORE_JEPSEN:-1}" != 0 ]; then
  echo "== jepsen (short profile)"
  jepsen_out=$(mktemp -d "${TMPDIR:-/tmp}/tsstore-jepsen-ci-XXXXXX")
  go run ./jepsen/cmd/jepsen -profile short -scenario all -seed "${JEPSEN_SEED:-0}" -out "$jepsen_out"
  rm -rf "$jepsen_out"
fi
