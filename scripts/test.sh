#!/usr/bin/env bash
# The whole test suite: formatting, vet, every test with the race
# detector (fuzz targets run their seed corpora; system tests start real
# tsstore processes on loopback), then the jepsen short profile.
# Tools: the pinned grpcurl and versitygw go to .tools/bin (git-ignored); the systemd
# unit test needs systemd-analyze, installed from Debian's packages when it
# is missing and apt-get is available (the test fails without it unless
# TSSTORE_NO_SYSTEMD=1); likewise postgresql-15 for the cdc tests.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.tools/*'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

if ! command -v systemd-analyze >/dev/null 2>&1 && [ "${TSSTORE_NO_SYSTEMD:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing systemd (for systemd-analyze) from Debian's packages"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

# PostgreSQL for the CDC connector and sink tests (internal/pgtest starts
# its own server from these binaries; the tests fail without them).
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && ! command -v postgres >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "== installing postgresql-15 (server binaries for the cdc tests) from Debian's packages"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
fi

# Pinned grpcurl for systemtest/grpcurl_test.go (server reflection).
GRPCURL_VERSION=v1.9.3
if ! go version -m .tools/bin/grpcurl 2>/dev/null | grep -q "mod[[:space:]]*github.com/fullstorydev/grpcurl[[:space:]]*$GRPCURL_VERSION"; then
  echo "== installing grpcurl $GRPCURL_VERSION into .tools/bin"
  GOBIN="$PWD/.tools/bin" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
fi

# Pinned versitygw, the real S3 server of the tiering tests
# (tiering/versitygw_test.go starts it on loopback; the tests fail without it).
VERSITYGW_VERSION=v1.8.0
if ! go version -m .tools/bin/versitygw 2>/dev/null | grep -q "mod[[:space:]]*github.com/versity/versitygw[[:space:]]*$VERSITYGW_VERSION"; then
  echo "== installing versitygw $VERSITYGW_VERSION into .tools/bin (about 70 s the first time)"
  GOBIN="$PWD/.tools/bin" go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
fi

echo "== go test -race"
# The output is kept so that a failure ends with a summary of what failed:
# a failed package prints every line its nodes logged, and a CI tail shows
# only the last of them.
test_log=$(mktemp "${TMPDIR:-/tmp}/tsstore-test-XXXXXX.log")
if ! go test -race -count=1 -timeout 12m "$@" ./... 2>&1 | tee "$test_log"; then
  echo "== go test failed; what failed:"
  grep -E -- '^(--- FAIL|FAIL|panic:|fatal error:|WARNING: DATA RACE)|race detected during execution|_test\.go:[0-9]+: ' "$test_log" | grep -v '^ok ' | tail -n 60 || true
  echo "(whole output: $test_log)"
  exit 1
fi
rm -f "$test_log"

# The jepsen short profile: every fault-injection scenario for ~35 s
# against real processes (docs/jepsen.md). TSSTORE_JEPSEN=0 skips it;
# JEPSEN_SEED reproduces a run. Results are kept only if it fails.
if [ "${TSSTORE_JEPSEN:-1}" != 0 ]; then
  echo "== jepsen (short profile)"
  jepsen_out=$(mktemp -d "${TMPDIR:-/tmp}/tsstore-jepsen-ci-XXXXXX")
  scenarios=all
  if [ "$(id -u)" != 0 ]; then
    # disk-full mounts a tmpfs per node, which needs root (CI runs as root).
    scenarios=crash,pause,partition,link,lossy-disk,corrupt,bitrot,snapshot,transfer,membership,fencing,retention,compaction,tiering
    echo "   not root: every scenario but disk-full (it mounts tmpfs; run as root to include it)"
  fi
  go run ./jepsen/cmd/jepsen -profile short -scenario "$scenarios" -seed "${JEPSEN_SEED:-0}" -out "$jepsen_out"
  rm -rf "$jepsen_out"
fi
