#!/usr/bin/env bash
# genproto.sh regenerates proto/tsstorev1 from proto/tsstore/v1/*.proto with
# pinned tools installed into ./.tools/bin (git-ignored).
#
#   scripts/genproto.sh           regenerate proto/tsstorev1/*.pb.go in place
#   scripts/genproto.sh --check   regenerate into a temp dir and diff against
#                                 the committed files; exit 1 on drift
#
# The output is byte-for-byte reproducible: buf compiles the .proto files
# itself (the generated header says "protoc (unknown)") and every plugin
# version is pinned below. Bump a pin here, rerun, and commit the diff.
set -euo pipefail

# Pinned tool versions. protoc-gen-go must match google.golang.org/protobuf
# in go.mod; protoc-gen-go-grpc must generate code the go.mod grpc accepts.
BUF_VERSION=v1.75.0
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
tools="$root/.tools/bin"
mkdir -p "$tools"

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

# install NAME WANT PKG@VERSION: go install PKG unless .tools/bin/NAME
# --version already prints WANT.
install() {
  local name=$1 want=$2 pkg=$3
  if [[ -x "$tools/$name" ]] && [[ "$("$tools/$name" --version 2>/dev/null)" == "$want" ]]; then
    return
  fi
  echo "genproto: installing $pkg" >&2
  GOBIN="$tools" go install "$pkg"
  local got
  got=$("$tools/$name" --version)
  if [[ "$got" != "$want" ]]; then
    echo "genproto: $name --version says '$got', want '$want'" >&2
    exit 1
  fi
}

install buf "${BUF_VERSION#v}" "github.com/bufbuild/buf/cmd/buf@$BUF_VERSION"
install protoc-gen-go "protoc-gen-go $PROTOC_GEN_GO_VERSION" \
  "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
install protoc-gen-go-grpc "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}" \
  "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"

# buf.gen.yaml names the plugins as "local: protoc-gen-go", resolved on PATH:
# the pinned ones come first.
export PATH="$tools:$PATH"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Only tsstore/ is generated: proto/google/ declares the imported
# google.rpc.Status, whose Go code comes from google.golang.org/genproto.
(cd proto && buf generate --template buf.gen.yaml --path tsstore --output "$out")

# Only generated files are compared or replaced; hand-written files such as
# proto/tsstorev1/doc.go are left alone.
gen_files() { (cd "$1" && find . -name '*.pb.go' | LC_ALL=C sort); }

if [[ $check -eq 1 ]]; then
  mkdir -p proto/tsstorev1
  if ! diff -u <(gen_files proto) <(gen_files "$out") >&2; then
    echo "genproto: the set of generated files differs; run scripts/genproto.sh" >&2
    exit 1
  fi
  status=0
  while read -r f; do
    if ! diff -u "proto/$f" "$out/$f" >&2; then status=1; fi
  done < <(gen_files "$out")
  if [[ $status -ne 0 ]]; then
    echo "genproto: generated code is stale; run scripts/genproto.sh" >&2
    exit 1
  fi
  echo "genproto: proto/tsstorev1 is up to date" >&2
  exit 0
fi

mkdir -p proto/tsstorev1
find proto/tsstorev1 -name '*.pb.go' -delete
(cd "$out" && find . -name '*.pb.go' -exec cp --parents {} "$root/proto/" \;)
echo "genproto: regenerated proto/tsstorev1" >&2
