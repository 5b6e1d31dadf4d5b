#!/usr/bin/env bash
# The real node's processes, run by tests/k8s/node/node.py as
#   unshare --net --mount --propagation private --fork -- inside.sh WORKDIR KUBELET IMAGE_ARCHIVE...
# in a network namespace of its own (the CNI bridge and every pod address live only there) and a
# private mount namespace (kubelet's volume mounts never reach the host), shared by containerd and the
# kubelet so both see the same mounts. SIGTERM stops the kubelet, then containerd.
set -euo pipefail
work=$1 kubelet=$2
shift 2
sock="$work/containerd/containerd.sock"

ip link set lo up
# The node's address, for kubelet's --node-ip (it refuses loopback); it exists only in this namespace,
# as do the pod addresses (10.88.0.0/24 on the CNI bridge).
# (a veth pair with both ends here: these kernels have no dummy device)
ip link add node0 type veth peer name node0-peer
ip link set node0-peer up
ip addr add 10.88.255.2/32 dev node0
# The `kubernetes` Service address: forward.py listens on it for pods (there is no kube-proxy).
ip addr add 10.0.0.1/32 dev node0
ip link set node0 up
ip route add default dev node0
# Paths the kubelet, containerd and CNI use whatever they are told (/var/log/pods and
# /var/log/containers, /var/lib/kubelet/device-plugins, /var/lib/cni's result cache, containerd's
# shim sockets in /run/containerd/s): in this mount namespace those trees are the node's own
# directories, so nothing lands in the host's.
for dir in /var/log /var/lib /run; do
  mkdir -p "$work/root$dir"
  mount --bind "$work/root$dir" "$dir"
done
echo $$ >"$work/ns.pid"

containerd --config "$work/containerd.toml" >"$work/logs/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 200); do
  ctr --address "$sock" version >/dev/null 2>&1 && break
  kill -0 "$containerd_pid" 2>/dev/null || { echo "containerd exited; see $work/logs/containerd.log" >&2; exit 1; }
  sleep 0.1
done
for archive in "$@"; do
  ctr --address "$sock" --namespace k8s.io images import "$archive" >>"$work/logs/import.log" 2>&1
done
touch "$work/images.ready"

"$kubelet" --config="$work/kubelet.yaml" --kubeconfig="$work/kubeconfig" --root-dir="$work/kubelet" \
  --cert-dir="$work/kubelet/pki" --hostname-override="$(cat "$work/node-name")" --node-ip=10.88.255.2 \
  --node-labels="$(cat "$work/node-labels")" --register-with-taints="$(cat "$work/node-taints")" \
  --v=2 >"$work/logs/kubelet.log" 2>&1 &
kubelet_pid=$!

stop() {
  kill -TERM "$kubelet_pid" 2>/dev/null || true
  wait "$kubelet_pid" 2>/dev/null || true
  kill -TERM "$containerd_pid" 2>/dev/null || true
  wait "$containerd_pid" 2>/dev/null || true
  exit 0
}
trap stop TERM INT
wait -n "$kubelet_pid" "$containerd_pid" || true
echo "kubelet or containerd exited; see $work/logs/" >&2
stop
