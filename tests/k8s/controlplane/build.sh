#!/usr/bin/env bash
# Builds the Kubernetes control plane the k8s tests run, from the Go module proxy, into
#   ${MPROXY_CACHE:-$HOME/.cache/mproxy}/k8s/bin
# kcp (one multi-call binary: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd,
# reached through symlinks of those names), helm and kwok, all pinned by go.mod/go.sum in this directory.
#
# Idempotent: a stamp (hash of go.sum, go.mod, the Go sources, this script and `go version`) beside the
# binaries says what they were built from; when it matches, nothing is built. GOMODCACHE and GOCACHE live
# in the same cache directory, so a rebuild after a small change is incremental.
#
#   build.sh          build if needed
#   build.sh --check  exit 0 if the cached binaries match the pins, 1 if not, 3 if Go is missing; build nothing
#   build.sh --force  rebuild even when the stamp matches
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${MPROXY_CACHE:-$HOME/.cache/mproxy}/k8s"
BIN="$CACHE/bin"
MODE="${1:-build}"

if ! command -v go >/dev/null 2>&1; then
  echo "k8s control plane: Go is not installed, so the Kubernetes tests cannot run." >&2
  echo "  Install Go >= 1.26 (https://go.dev/dl/) and rerun $0; until then those tests skip (fail in CI)." >&2
  [ "$MODE" = "--check" ] && exit 3
  exit 0  # not fatal here: the test fixture reports it loudly (need() fails in CI)
fi

export GOMODCACHE="$CACHE/gomod"
export GOCACHE="$CACHE/gocache"
export GOTOOLCHAIN=local           # never fetch another toolchain behind the user's back
export GOFLAGS="-mod=readonly -buildvcs=false"
export CGO_ENABLED=0               # static binaries; the control plane needs no cgo

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
complete=1
for b in kcp helm kwok kube-apiserver kube-controller-manager kube-scheduler kubectl etcd; do
  [ -x "$BIN/$b" ] || complete=0
done
[ -f "$BIN/kwok-stages.yaml" ] || complete=0

if [ "$MODE" = "--check" ]; then
  if [ "$want" = "$have" ] && [ "$complete" = 1 ]; then exit 0; fi
  echo "k8s control plane in $BIN is missing or stale: run $0" >&2
  exit 1
fi

if [ "$MODE" != "--force" ] && [ "$want" = "$have" ] && [ "$complete" = 1 ]; then
  echo "k8s control plane: up to date in $BIN (stamp ${want:0:12})"
  exit 0
fi

mkdir -p "$CACHE"
# Two test runs at once must not build into the same directory.
exec 9>"$CACHE/build.lock"
flock 9
if [ "$MODE" != "--force" ] && [ "$(cat "$BIN/.stamp" 2>/dev/null || true)" = "$want" ]; then
  echo "k8s control plane: built meanwhile by another run, up to date in $BIN"
  exit 0
fi

cd "$HERE"
k8s="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
etcd="$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
helm="$(go list -m -f '{{.Version}}' helm.sh/helm/v3)"
kwok="$(go list -m -f '{{.Version}}' sigs.k8s.io/kwok)"
minor="${k8s#v1.}"; minor="${minor%%.*}"

# Without these the servers report v0.0.0-master, which breaks Helm's kubeVersion checks.
ldflags="-s -w"
ldflags+=" -X k8s.io/component-base/version.gitVersion=$k8s"
ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$k8s"
ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=1"
ldflags+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"
ldflags+=" -X helm.sh/helm/v3/internal/version.version=$helm"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
# `helm template` (no cluster) assumes this Kubernetes version; the default, v1.20, fails charts' kubeVersion.
ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1"
ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"

echo "k8s control plane: building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $k8s,"
echo "  etcd $etcd (embedded), helm $helm, kwok $kwok with $(go env GOVERSION) into $BIN"
echo "  (cold: about 15-25 min on 2 cores; GOMODCACHE and GOCACHE are kept in $CACHE)"
start=$SECONDS
out="$CACHE/bin.new"
rm -rf "$out"
mkdir -p "$out"
go build -trimpath -ldflags "$ldflags" -o "$out/" \
  ./cmd/kcp helm.sh/helm/v3/cmd/helm sigs.k8s.io/kwok/cmd/kwok
for c in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd; do
  ln -s kcp "$out/$c"
done
# The kwok binary has no built-in stages (kwokctl adds them): take the upstream "fast" ones from the
# pinned module, so nodes become Ready and pods Running (and get deleted) right away.
stages="$(go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage"
for f in node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml \
         pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
  echo "---"
  cat "$stages/$f"
done >"$out/kwok-stages.yaml"
echo "$want" >"$out/.stamp"
rm -rf "$BIN"
mv "$out" "$BIN"
echo "k8s control plane: built in $((SECONDS - start)) s: $(cd "$BIN" && du -sh kcp helm kwok | tr '\n\t' '  ')"
