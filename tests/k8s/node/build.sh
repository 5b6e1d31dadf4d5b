#!/usr/bin/env bash
# Builds the kubelet of the real test node from the same k8s.io/kubernetes module as the control
# plane (tests/k8s/controlplane: same version, same staging replaces) into
#   ${MPROXY_CACHE:-$HOME/.cache/mproxy}/node/bin/kubelet
# It shares the control plane's GOMODCACHE and GOCACHE (both safe for concurrent use), so with the
# control plane built it compiles little and links in about a minute; it never touches the control
# plane's binaries or stamp. As root with apt-get it first installs Debian's containerd, runc and CNI
# plugins if they are missing. A stamp (go.mod, go.sum, the Go sources, this script, `go version`) makes
# it a no-op when nothing changed.
#
#   build.sh          build if needed
#   build.sh --check  exit 0 if the kubelet matches the pins, 1 if not, 3 if Go is missing
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="${MPROXY_CACHE:-$HOME/.cache/mproxy}"
BIN="$ROOT/node/bin"
MODE="${1:-build}"

# The node's runtime comes from Debian: installed here as root (CI), else named for the user (the
# test fixture then skips loudly, or fails in CI).
if [ "$MODE" != "--check" ]; then
  missing=()
  for tool in containerd ctr runc unshare nsenter ip curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ -x /usr/lib/cni/bridge ] || missing+=(cni-plugins)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq containerd runc containernetworking-plugins util-linux iproute2 curl >/dev/null
    else
      echo "real node: missing ${missing[*]}; install them (Debian: apt-get install containerd runc" \
           "containernetworking-plugins iproute2 curl)" >&2
    fi
  fi
fi

if ! command -v go >/dev/null 2>&1; then
  echo "real node: Go is not installed, so the kubelet cannot be built; install Go >= 1.26" >&2
  [ "$MODE" = "--check" ] && exit 3
  exit 0  # the test fixture reports it loudly (need() fails in CI)
fi

export GOMODCACHE="$ROOT/k8s/gomod"
export GOCACHE="$ROOT/k8s/gocache"
export GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false"
export CGO_ENABLED=0

stamp() {
  {
    go version
    cd "$HERE"
    sha256sum go.sum go.mod build.sh
    find cmd -name '*.go' -type f | LC_ALL=C sort | xargs sha256sum
  } | sha256sum | cut -d' ' -f1
}

want="$(stamp)"
have="$(cat "$BIN/.stamp" 2>/dev/null || true)"
if [ "$want" = "$have" ] && [ -x "$BIN/kubelet" ]; then
  [ "$MODE" = "--check" ] || echo "real node: kubelet up to date in $BIN"
  exit 0
fi
if [ "$MODE" = "--check" ]; then
  echo "real node: kubelet in $BIN is missing or stale: run $0" >&2
  exit 1
fi

mkdir -p "$ROOT/node"
exec 9>"$ROOT/node/build.lock"
flock 9
cd "$HERE"
k8s="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
minor="${k8s#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
ldflags+=" -X k8s.io/component-base/version.gitVersion=$k8s"
ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
echo "real node: building kubelet $k8s into $BIN"
start=$SECONDS
out="$ROOT/node/bin.new"
rm -rf "$out"
mkdir -p "$out"
go build -trimpath -ldflags "$ldflags" -o "$out/" ./cmd/kubelet
echo "$want" >"$out/.stamp"
rm -rf "$BIN"
mv "$out" "$BIN"
echo "real node: kubelet built in $((SECONDS - start)) s"
