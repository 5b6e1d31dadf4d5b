"""A real Kubernetes control plane for the k8s tests, run as local processes on loopback.

Built from Go modules by tests/k8s/controlplane/build.sh into ${MPROXY_CACHE:-~/.cache/mproxy}/k8s/bin
(kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd in one multi-call binary,
plus helm and kwok). No containers: kwok plays the kubelets, so scheduled pods become Running.
Versions and figures: docs/kubernetes-tests.md.

Fixtures
--------
``kube`` (session scope) -> :class:`KubeCluster`, started once per pytest session:

    kube.server          "https://127.0.0.1:PORT"
    kube.kubeconfig      Path of an admin kubeconfig (token in group system:masters)
    kube.admin_token     the admin bearer token
    kube.user_token      a token of user ``kube.user_name`` ("alice"): authenticated, no RBAC bindings
    kube.user_kubeconfig Path of a kubeconfig for that user
    kube.ca_file         Path of the CA that signed the apiserver's serving certificate
    kube.bin_dir         directory holding kubectl, helm, kwok, kube-apiserver, ...
    kube.kubectl_path, kube.helm   paths of the kubectl and helm binaries (versions match the server)
    kube.log_dir         where every component logs (<name>.log); kept when a test fails
    kube.nodes           names of the kwok nodes created at startup ("kwok-node-0", "kwok-node-1")
    kube.version         server version, e.g. "v1.36.3"

    kube.kubectl(*args, input=None, check=True, kubeconfig=None, timeout=60) -> CompletedProcess[str]
    kube.run_helm(*args, check=True, timeout=120) -> CompletedProcess[str]   (HELM_* dirs are private)
    kube.env(**extra) -> dict  environment for subprocesses: KUBECONFIG, PATH with bin_dir first, HOME
    kube.api_client(token=None) -> kubernetes.client.ApiClient  (admin unless another token is given)
    kube.create_node(name, labels=None, wait=True) -> None   a Node that kwok manages; waits until it
                         is Ready and the node lifecycle controller has lifted its not-ready taint
    kube.wait_for(fn, timeout=30, what="...")     poll fn() until truthy; TimeoutError names `what`

``kube_namespace`` (function scope) -> str: a fresh namespace whose default ServiceAccount exists
(so pods can be created at once); deleted after the test without waiting.

Nodes carry the annotation ``kwok.x-k8s.io/node: fake`` and the label ``type: kwok`` and no taints, so
any pod schedules on them. kwok's pod IPs come from 10.244.0.0/16; Services get 10.0.0.0/24.

Running the controllers: kube-controller-manager runs the deployment, replicaset, statefulset,
daemonset, job, garbage-collector, namespace, serviceaccount(-token), root-ca publisher, endpoints,
endpointslice, clusterrole-aggregation, pod-GC and node-lifecycle controllers; kube-scheduler
schedules. The admission chain is the default one (MutatingAdmissionWebhook and
ValidatingAdmissionWebhook included), so a webhook served by a test process on 127.0.0.1 (HTTPS) is
really called.

Logs: when any test using ``kube`` fails, its report names the log directory and the directory is
kept after the session (MPROXY_K8S_KEEP_LOGS=1 keeps it always). Startup failures quote the log tail.

Missing binaries skip the tests with the reason (``need()``; a failure in CI): run
tests/k8s/controlplane/build.sh.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.conftest import need
from tests.k8s.bodies import as_body
from tests.ports import free_port

from mproxy.ca import CertificateAuthority

HERE = Path(__file__).resolve().parent
BUILD_SH = HERE / "controlplane" / "build.sh"
CACHE_DIR = Path(os.environ.get("MPROXY_CACHE", Path.home() / ".cache" / "mproxy")) / "k8s"
BIN_DIR = CACHE_DIR / "bin"

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
STARTUP_TIMEOUT = 90.0  # generous for a loaded 2-core CI machine; warm startup takes ~10 s
CONTROLLERS = ",".join(
    [
        "deployment-controller",
        "replicaset-controller",
        "statefulset-controller",
        "daemonset-controller",
        "job-controller",
        "garbage-collector-controller",
        "namespace-controller",
        "serviceaccount-controller",
        "serviceaccount-token-controller",
        "root-ca-certificate-publisher-controller",
        "endpoints-controller",
        "endpointslice-controller",
        "clusterrole-aggregation-controller",
        "node-lifecycle-controller",  # lifts the not-ready taint once kwok reports a node Ready
        "pod-garbage-collector-controller",
    ]
)

T = TypeVar("T")


class ControlPlaneError(RuntimeError):
    """The control plane did not start; the message quotes the failing component's log."""


# ---------------------------------------------------------------------------------------------
# certificates and keys


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _make_pki(pki: Path) -> None:
    """A CA, a serving certificate for the apiserver and the service-account signing key."""
    ca = CertificateAuthority.create("mproxy-test-ca", days=2)
    serving = ca.issue(["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                        "kubernetes.default.svc.cluster.local", "127.0.0.1", "10.0.0.1"], days=2)
    ca.write_cert(pki / "ca.crt")
    serving.write(pki, "apiserver")  # apiserver.crt (leaf + CA), apiserver.key (0600)
    _write_key(pki / "sa.key", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _die_with_parent() -> None:
    """Runs in the child before exec: if pytest dies hard, the kernel kills the component too."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


# ---------------------------------------------------------------------------------------------
# the cluster


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class KubeCluster:
    """Handle on a running control plane; see the module docstring for the API."""

    work_dir: Path
    log_dir: Path
    bin_dir: Path = BIN_DIR
    server: str = ""
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    user_token: str = field(default_factory=lambda: secrets.token_hex(16))
    user_name: str = "alice"
    version: str = ""
    nodes: list[str] = field(default_factory=list)
    _procs: list[_Proc] = field(default_factory=list)
    _t0: float = 0.0

    @property
    def pki(self) -> Path:
        return self.work_dir / "pki"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def kubeconfig(self) -> Path:
        return self.work_dir / "admin.kubeconfig"

    @property
    def user_kubeconfig(self) -> Path:
        return self.work_dir / f"{self.user_name}.kubeconfig"

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def helm(self) -> Path:
        return self.bin_dir / "helm"

    # -- helpers for tests -------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a subprocess that talks to this cluster (kubectl, helm, an operator)."""
        env = dict(os.environ)
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            PATH=f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}",
            HOME=str(self.work_dir / "home"),
            HELM_CACHE_HOME=str(self.work_dir / "helm" / "cache"),
            HELM_CONFIG_HOME=str(self.work_dir / "helm" / "config"),
            HELM_DATA_HOME=str(self.work_dir / "helm" / "data"),
        )
        env.update(extra)
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster (admin by default); check=True raises on failure."""
        cmd = [str(self.kubectl_path), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        return self._run(cmd, input=input, check=check, timeout=timeout)

    def run_helm(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this cluster as admin, with private HELM_* directories."""
        cmd = [str(self.helm), f"--kubeconfig={self.kubeconfig}", *args]
        return self._run(cmd, input=None, check=check, timeout=timeout)

    def _run(
        self, cmd: list[str], *, input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, env=self.env(), check=False
        )
        if check and res.returncode != 0:
            shown = " ".join(cmd[:1] + cmd[2:])  # without the --kubeconfig path
            raise AssertionError(
                f"`{shown}` exited {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
            )
        return res

    def api_client(self, token: str | None = None) -> Any:
        """A kubernetes.client.ApiClient for this cluster; admin unless `token` is given."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = str(self.ca_file)
        cfg.api_key = {"authorization": token or self.admin_token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(cfg)

    def wait_for(
        self, fn: Callable[[], T], timeout: float = 30, what: str = "condition", interval: float = 0.2
    ) -> T:
        """Poll `fn` until it returns something truthy; exceptions count as not yet."""
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while True:
            try:
                value = fn()
                if value:
                    return value
            except Exception as exc:  # a not-yet-existing object, a refused connection
                last = exc
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out after {timeout:.0f}s waiting for {what}"
                    + (f" (last error: {last!r})" if last else "")
                    + f"; control plane logs: {self.log_dir}"
                )
            time.sleep(interval)

    def create_node(self, name: str, labels: dict[str, str] | None = None, wait: bool = True) -> None:
        """Create a Node that kwok manages; with `wait`, return once it is Ready and untainted."""
        from kubernetes import client

        core = client.CoreV1Api(self.api_client())
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    **(labels or {}),
                },
            },
        }
        core.create_node(as_body(body))
        self.nodes.append(name)
        if wait:
            self.wait_node_ready(name)

    def wait_node_ready(self, name: str, timeout: float = 30) -> None:
        """Wait until kwok reports node `name` Ready and the node lifecycle controller untaints it."""
        from kubernetes import client

        core = client.CoreV1Api(self.api_client())

        def ready() -> bool:
            node = core.read_node(name)
            conditions = (node.status.conditions if node.status else None) or []
            taints = {t.key for t in (node.spec.taints if node.spec else None) or []}
            return (
                any(c.type == "Ready" and c.status == "True" for c in conditions)
                and "node.kubernetes.io/not-ready" not in taints
            )

        self.wait_for(
            ready, timeout=timeout, what=f"node {name} to be Ready (kwok) and untainted (node lifecycle)"
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._t0 = time.monotonic()
        for d in (self.pki, self.log_dir, self.work_dir / "home", self.work_dir / "etcd"):
            d.mkdir(parents=True, exist_ok=True)
        _make_pki(self.pki)
        (self.pki / "tokens.csv").write_text(
            f'{self.admin_token},admin,admin-uid,"system:masters"\n'
            f"{self.user_token},{self.user_name},{self.user_name}-uid\n"
        )
        (self.pki / "tokens.csv").chmod(0o600)

        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        self._write_kubeconfig(self.kubeconfig, "admin", self.admin_token)
        self._write_kubeconfig(self.user_kubeconfig, self.user_name, self.user_token)

        self._spawn(
            "etcd",
            f"--data-dir={self.work_dir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
        )
        # The apiserver retries etcd itself, so it starts at once rather than after etcd is ready.
        self._spawn(
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={self.pki}",
            f"--tls-cert-file={self.pki / 'apiserver.crt'}",
            f"--tls-private-key-file={self.pki / 'apiserver.key'}",
            f"--client-ca-file={self.ca_file}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.pki / 'sa.key'}",
            f"--service-account-signing-key-file={self.pki / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            f"--token-auth-file={self.pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--enable-priority-and-fairness=false",  # fewer start hooks; nothing here needs fairness
            "--profiling=false",
            "--v=1",
        )
        self._phase("etcd and kube-apiserver started")
        self._wait_ready()
        self._phase(f"kube-apiserver {self.version} ready")

        admin = f"--kubeconfig={self.kubeconfig}"
        self._spawn(
            "kube-controller-manager",
            admin,
            "--leader-elect=false",
            "--secure-port=0",
            f"--controllers={CONTROLLERS}",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            f"--root-ca-file={self.ca_file}",
            "--use-service-account-credentials=false",
            "--cluster-name=mproxy-test",
            "--node-monitor-period=1s",  # untaint new kwok nodes within a second, not five
            "--v=1",
        )
        self._spawn("kube-scheduler", admin, "--leader-elect=false", "--secure-port=0", "--v=1")
        self._spawn(
            "kwok",
            admin,
            f"--config={self.bin_dir / 'kwok-stages.yaml'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            "--cidr=10.244.0.0/16",
            "--node-port=0",
            "--server-address=",
            exe=self.bin_dir / "kwok",
        )
        self._phase("controllers, scheduler and kwok started")
        for i in range(2):
            self.create_node(f"kwok-node-{i}", wait=False)
        for name in self.nodes:
            self.wait_node_ready(name, timeout=STARTUP_TIMEOUT)
        self._phase("nodes Ready")

        from kubernetes import client

        core = client.CoreV1Api(self.api_client())
        self.wait_for(
            lambda: core.read_namespaced_service_account("default", "default"),
            timeout=STARTUP_TIMEOUT,
            what="kube-controller-manager to create the default ServiceAccount",
        )
        self._phase("default ServiceAccount exists: ready for tests")

    def _phase(self, what: str) -> None:
        """Startup timeline in fixture.log, to see where startup time goes."""
        with (self.log_dir / "fixture.log").open("a") as f:
            f.write(f"{time.monotonic() - self._t0:6.2f}s {what}\n")

    def _write_kubeconfig(self, path: Path, user: str, token: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "mproxy-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "mproxy-test", "context": {"cluster": "mproxy-test", "user": user}}],
            "current-context": "mproxy-test",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    def _spawn(self, name: str, *args: str, exe: Path | None = None) -> None:
        log = self.log_dir / f"{name}.log"
        cmd = [str(exe or self.bin_dir / name), *args]
        with log.open("wb") as out:
            out.write(("$ " + " ".join(cmd) + "\n").encode())
            out.flush()
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                env={**self.env(), "KUBECONFIG": ""},
                start_new_session=True,  # its own process group, killed as a whole at teardown
                preexec_fn=_die_with_parent,
            )
        self._procs.append(_Proc(name, popen, log))

    def check_alive(self) -> None:
        for p in self._procs:
            code = p.popen.poll()
            if code is not None:
                raise ControlPlaneError(
                    f"{p.name} exited with code {code}; logs in {self.log_dir}\n"
                    f"--- last lines of {p.log.name} ---\n{_tail(p.log)}"
                )

    def _wait_ready(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            req = urllib.request.Request(
                f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
            )
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
                    if resp.status == 200:
                        break
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")[-2000:]
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.2)
        else:
            raise ControlPlaneError(
                f"kube-apiserver not ready after {STARTUP_TIMEOUT:.0f}s: {last}\nlogs in {self.log_dir}\n"
                f"--- last lines of kube-apiserver.log ---\n{_tail(self.log_dir / 'kube-apiserver.log')}"
            )
        req = urllib.request.Request(
            f"{self.server}/version", headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            self.version = yaml.safe_load(resp.read())["gitVersion"]

    def stop(self) -> None:
        """Stop every component, last started first (the apiserver shuts down fast only while etcd
        is still up): SIGTERM to its process group, SIGKILL after 10 s."""
        for p in reversed(self._procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.popen.pid, signal.SIGTERM)
            try:
                p.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.popen.pid, signal.SIGKILL)
                p.popen.wait(timeout=10)
        self._procs.clear()


# ---------------------------------------------------------------------------------------------
# fixtures and hooks

_FAILED = pytest.StashKey[bool]()
_CLUSTER = pytest.StashKey[KubeCluster]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Name the log directory in the report of a failed test that used the control plane."""
    report = yield
    cluster = item.session.stash.get(_CLUSTER, None)
    if report.failed and cluster is not None and "kube" in getattr(item, "fixturenames", ()):
        item.session.stash[_FAILED] = True
        report.sections.append(("kubernetes control plane", f"component logs: {cluster.log_dir}"))
    return report


def _binaries_ready() -> None:
    """Skip (fail in CI) unless build.sh says the cached binaries match the pinned versions."""
    need(
        shutil.which("go") or (BIN_DIR / "kcp").exists(),
        "Go is not installed, so the Kubernetes "
        "control plane cannot be built (install Go >= 1.26, then run tests/k8s/controlplane/build.sh)",
    )
    if shutil.which("go"):
        res = subprocess.run(
            [str(BUILD_SH), "--check"], capture_output=True, text=True, timeout=60, check=False
        )
        need(
            res.returncode == 0,
            f"the Kubernetes control plane is not built or is stale: run {BUILD_SH} ({res.stderr.strip()})",
        )
    need((BIN_DIR / "kcp").exists(), f"no control plane binaries in {BIN_DIR}: run {BUILD_SH}")


def _port_clash(cluster: KubeCluster) -> bool:
    """Did a component fail because a port picked as free was taken before it bound?"""
    return any(
        "address already in use" in log.read_text(errors="replace") for log in cluster.log_dir.glob("*.log")
    )


def _finish(cluster: KubeCluster, request: pytest.FixtureRequest, keep: bool) -> None:
    """Stop the components; keep only the logs (and only when asked to): never data, keys or tokens."""
    cluster.stop()
    for entry in cluster.work_dir.iterdir():
        if entry != cluster.log_dir:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    if keep:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"kubernetes control plane logs kept in {cluster.log_dir}", yellow=True)
    else:
        shutil.rmtree(cluster.work_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kube(request: pytest.FixtureRequest) -> Iterator[KubeCluster]:
    """The running control plane (see the module docstring)."""
    _binaries_ready()
    for attempt in (1, 2):
        work = Path(tempfile.mkdtemp(prefix="mproxy-k8s-"))
        cluster = KubeCluster(work_dir=work, log_dir=work / "logs")
        try:
            cluster.start()
            break
        except BaseException as exc:  # whatever failed, stop what did start
            clash = isinstance(exc, ControlPlaneError) and _port_clash(cluster)
            _finish(cluster, request, keep=True)
            if attempt == 2 or not clash:
                raise
    request.session.stash[_CLUSTER] = cluster
    try:
        yield cluster
        cluster.check_alive()  # a component that died mid-session is an error, not a silent pass
    finally:
        keep = request.session.stash.get(_FAILED, False) or os.environ.get("MPROXY_K8S_KEEP_LOGS") == "1"
        _finish(cluster, request, keep)


@pytest.fixture
def kube_namespace(kube: KubeCluster) -> Iterator[str]:
    """A fresh namespace, ready for pods (its default ServiceAccount exists); deleted afterwards."""
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube.api_client())
    core.create_namespace(as_body({"metadata": {"name": name}}))
    kube.wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
        what=f"the default ServiceAccount in namespace {name}",
    )
    yield name
    with contextlib.suppress(Exception):
        core.delete_namespace(name)
