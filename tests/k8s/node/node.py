"""A real Kubernetes node next to the kwok nodes: the kubelet built by tests/k8s/node/build.sh and
Debian's containerd + runc, in a network and mount namespace of their own (inside.sh), with the CNI
bridge and host-local plugins giving pods addresses that exist only in that namespace.

    node = RealNode("real-node-0", work_dir, image="localhost/mproxy:dev")
    node.start(kubeconfig, image_archives, pause_image)
    node.in_netns("curl", "-s", f"http://{pod_ip}:8080/")   # pods are reachable only from inside
    node.stop()                                               # kubelet, containerd, every container

The kubelet reaches the apiserver on 127.0.0.1 through forward.py (a listener inside the namespace,
connecting out on the host's loopback); node.forward() adds more, e.g. for the apiserver to reach a
webhook pod. The node is tainted ``mproxy.dev/real-node=true:NoSchedule`` and
labelled ``type: real``, so only pods that ask for it land there; kwok never touches it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("MPROXY_CACHE", Path.home() / ".cache" / "mproxy"))
KUBELET = CACHE / "node" / "bin" / "kubelet"
BUILD_SH = HERE / "build.sh"
TAINT_KEY = "mproxy.dev/real-node"
POD_SUBNET = "10.88.0.0/24"
# The `kubernetes` Service's ClusterIP (the apiserver's --service-cluster-ip-range is 10.0.0.0/24; its
# certificate names 10.0.0.1). inside.sh puts it on the node's node0 interface and forward.py listens
# there, so pods reach the apiserver at the address Kubernetes tells them, without kube-proxy.
API_SERVICE_IP = "10.0.0.1"
STARTUP_TIMEOUT = 120.0


def containerd_config(work: Path, pause_image: str) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{work}/containerd/root"
state = "{work}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{work}/containerd/containerd.sock"
[ttrpc]
  address = "{work}/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{work}/containerd/opt"
[{cri}]
  sandbox_image = "{pause_image}"
  # Writing a negative oom_score_adj is not permitted on these machines: without this every sandbox
  # fails with runc's "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{work}/runc"
[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{work}/cni"
  max_conf_num = 1
"""


def cni_config(work: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "mproxy-node",
        "plugins": [{
            "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(work / "cni-ipam")},
        }],
    }


def kubelet_config(work: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # These machines: cgroup v1 (hybrid), no systemd cgroup driver, swap not checked, no QoS
        # cgroup hierarchy of the kubelet's own, no node-allocatable enforcement.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "localStorageCapacityIsolation": False,
        "containerRuntimeEndpoint": f"unix://{work}/containerd/containerd.sock",
        "address": "127.0.0.1",
        "healthzBindAddress": "127.0.0.1",
        "readOnlyPort": 0,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "resolvConf": "",
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,  # never delete the imported images (there is no registry)
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "volumePluginDir": str(work / "kubelet" / "volume-plugins"),
        "nodeStatusUpdateFrequency": "2s",
        "syncFrequency": "5s",
    }


@dataclass
class RealNode:
    name: str
    work: Path
    image: str = ""  # the mproxy image the node holds (set by the test fixture)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        return self.work / "logs"

    def start(self, kubeconfig: Path, archives: list[Path], pause_image: str) -> None:
        """Start the node's processes; returns once containerd holds the images (the kubelet is
        then registering). Call stop() afterwards, also when this raises."""
        work = self.work
        for sub in ("logs", "containerd", "cni", "cni-ipam", "kubelet/pki", "runc"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        (work / "containerd.toml").write_text(containerd_config(work, pause_image))
        (work / "cni" / "10-mproxy.conflist").write_text(json.dumps(cni_config(work)))
        (work / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config(work)))
        (work / "kubeconfig").write_bytes(kubeconfig.read_bytes())
        (work / "node-name").write_text(self.name)
        (work / "node-labels").write_text("type=real,kubernetes.io/os=linux")
        (work / "node-taints").write_text(f"{TAINT_KEY}=true:NoSchedule")
        ns = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "--fork", "--kill-child",
             str(HERE / "inside.sh"), str(work), str(KUBELET), *map(str, archives)],
            stdout=(work / "logs" / "inside.log").open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        self.procs.append(ns)
        pid_file = work / "ns.pid"
        self._wait(lambda: pid_file.exists() and pid_file.read_text().strip(), "the node namespace", ns)
        port = urlparse(yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]).port
        assert port
        self.forward(f"ns:127.0.0.1:{port}=host:127.0.0.1:{port}",
                     f"ns:{API_SERVICE_IP}:443=host:127.0.0.1:{port}")
        self._wait(lambda: (work / "images.ready").exists(), "containerd and the image import", ns)

    def forward(self, *specs: str) -> None:
        """Start a forward.py between the host and the node's namespace (its SPEC syntax); it runs
        until stop()."""
        log = self.log_dir / "forward.log"
        proc = subprocess.Popen([sys.executable, str(HERE / "forward.py"), f"/proc/{self.ns_pid()}/ns/net",
                                 *specs], stdout=subprocess.PIPE, stderr=log.open("ab"),
                                start_new_session=True)
        self.procs.insert(0, proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == b"ready\n", (specs, line, self.log_tail("forward.log"))

    def _wait(self, ready: Any, what: str, proc: subprocess.Popen[bytes],
              timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"the real node stopped before {what}:\n{self.all_logs()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready after {timeout:.0f} s:\n{self.all_logs()}")
            time.sleep(0.1)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_dir / name
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def all_logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.log_tail(n)}" for n in
                         ("inside.log", "containerd.log", "import.log", "kubelet.log", "forward.log"))

    def pod_logs(self, namespace: str, pod: str) -> str:
        """Every container log of a pod, as the kubelet wrote them (`kubectl logs` would need the
        apiserver to reach the kubelet, which lives in the node's namespace)."""
        files = sorted((self.work / "root" / "var" / "log" / "pods").glob(f"{namespace}_{pod}_*/*/*.log"))
        return "\n".join(f"--- {f.parent.name}/{f.name}\n{f.read_text(errors='replace')}" for f in files)

    def ns_pid(self) -> str:
        return (self.work / "ns.pid").read_text().strip()

    def in_netns(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        """Run a command in the node's network namespace (where the pod addresses are)."""
        return subprocess.run(["nsenter", f"--net=/proc/{self.ns_pid()}/ns/net", *args],
                              capture_output=True, timeout=timeout, check=False)

    def stop(self) -> None:
        """Stop the kubelet and containerd (SIGTERM to inside.sh), then every container and shim they
        left: found by this node's unique work directory in their command lines, killed by pid."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        runc_root = self.work / "runc" / "k8s.io"
        if runc_root.exists():
            listed = subprocess.run(["runc", "--root", str(runc_root), "list", "-q"], capture_output=True,
                                    text=True, check=False)
            for cid in listed.stdout.split():
                subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", cid],
                               capture_output=True, check=False)
        for pid in _pids_mentioning(str(self.work)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # runc removed each container's cgroup; containerd's parent (k8s.io) is left empty. rmdir
        # refuses a cgroup that still has children, so another node's containers are never touched.
        for parent in Path("/sys/fs/cgroup").glob("*/k8s.io"):
            with contextlib.suppress(OSError):
                parent.rmdir()


def _pids_mentioning(text: str) -> list[int]:
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found
