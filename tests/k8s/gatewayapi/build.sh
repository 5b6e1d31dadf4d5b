#!/usr/bin/env bash
# Gets the Gateway API from the Go module proxy (the release pinned by go.mod here) into
#   ${MPROXY_CACHE:-$HOME/.cache/mproxy}/gateway-api
#   crds/standard/*.yaml, crds/experimental/*.yaml   the release's CRDs, copied from the module (never committed)
#   bin/conformance.test, bin/echo-basic             with --conformance: the upstream conformance suite and
#                                                    its echo backend, built from source
# Idempotent: a stamp (go.mod, go.sum, the Go sources, this script, `go version`) makes a rerun a no-op.
#
#   build.sh                 the CRDs (seconds: one module download)
#   build.sh --conformance   the CRDs and the conformance binaries (cold: minutes on 2 cores)
#   build.sh --check         exit 0 if the CRDs are there and current, 1 if not, 3 without Go
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${MPROXY_CACHE:-$HOME/.cache/mproxy}"
OUT="$CACHE/gateway-api"
MODE="${1:-crds}"

if ! command -v go >/dev/null 2>&1; then
  echo "gateway-api: Go is not installed, so the Gateway API CRDs cannot be fetched." >&2
  echo "  Install Go >= 1.26 and rerun $0; until then the Gateway API tests skip (fail in CI)." >&2
  [ "$MODE" = "--check" ] && exit 3
  exit 0
fi

# The control plane's module and build caches: the Kubernetes modules are shared.
export GOMODCACHE="$CACHE/k8s/gomod"
export GOCACHE="$CACHE/k8s/gocache"
export GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false"
export CGO_ENABLED=0

stamp() {
  {
    go version
    cd "$HERE"
    sha256sum go.sum go.mod build.sh
    find . -name '*.go' -type f | LC_ALL=C sort | xargs sha256sum
  } | sha256sum | cut -d' ' -f1
}
want="$(stamp)"

crds_ok() { [ "$(cat "$OUT/crds/.stamp" 2>/dev/null || true)" = "$want" ]; }
bins_ok() {
  [ "$(cat "$OUT/bin/.stamp" 2>/dev/null || true)" = "$want" ] && [ -x "$OUT/bin/conformance.test" ] &&
    [ -x "$OUT/bin/echo-basic" ]
}

if [ "$MODE" = "--check" ]; then
  crds_ok && exit 0
  echo "gateway-api CRDs in $OUT/crds are missing or stale: run $0" >&2
  exit 1
fi

mkdir -p "$OUT"
exec 9>"$OUT/build.lock"
flock 9
cd "$HERE"

if ! crds_ok; then
  dir="$(go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)"
  if [ -z "$dir" ] || [ ! -d "$dir/config/crd" ]; then
    go mod download sigs.k8s.io/gateway-api
    dir="$(go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)"
  fi
  rm -rf "$OUT/crds.new"
  mkdir -p "$OUT/crds.new"
  for channel in standard experimental; do
    mkdir "$OUT/crds.new/$channel"
    # The CRDs only: the ValidatingAdmissionPolicy of safe upgrades is the cluster admin's choice.
    cp "$dir/config/crd/$channel"/gateway.networking.*k8s.io_*.yaml "$OUT/crds.new/$channel/"
    rm -f "$OUT/crds.new/$channel/gateway.networking.k8s.io_vap_safeupgrades.yaml"
  done
  echo "$want" >"$OUT/crds.new/.stamp"
  rm -rf "$OUT/crds"
  mv "$OUT/crds.new" "$OUT/crds"
  echo "gateway-api: CRDs of $(go list -m -f '{{.Version}}' sigs.k8s.io/gateway-api) in $OUT/crds"
fi

if [ "$MODE" = "--conformance" ] && ! bins_ok; then
  start=$SECONDS
  rm -rf "$OUT/bin.new"
  mkdir -p "$OUT/bin.new"
  go build -trimpath -ldflags "-s -w" -o "$OUT/bin.new/echo-basic" sigs.k8s.io/gateway-api/conformance/echo-basic
  go test -c -trimpath -ldflags "-s -w" -o "$OUT/bin.new/conformance.test" ./conformance
  echo "$want" >"$OUT/bin.new/.stamp"
  rm -rf "$OUT/bin"
  mv "$OUT/bin.new" "$OUT/bin"
  echo "gateway-api: conformance suite and echo-basic built in $((SECONDS - start)) s into $OUT/bin"
fi
