"""Start the test control plane by hand, for debugging: the same cluster the `kube` fixture starts.

    .venv/bin/python tests/k8s/controlplane/up.py     # prints KUBECONFIG; Ctrl-C stops and cleans up

Build it first with tests/k8s/controlplane/build.sh.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from tests.k8s.conftest import BIN_DIR, BUILD_SH, ControlPlaneError, KubeCluster  # noqa: E402


def main() -> int:
    if subprocess.run([str(BUILD_SH), "--check"], check=False).returncode != 0:
        print(f"build it first: {BUILD_SH}", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="mproxy-k8s-up-"))
    cluster = KubeCluster(work_dir=work, log_dir=work / "logs")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C
    try:
        started = time.monotonic()
        cluster.start()
        print(f"Kubernetes {cluster.version} up in {time.monotonic() - started:.1f}s at {cluster.server}")
        print(f"  export KUBECONFIG={cluster.kubeconfig} PATH={BIN_DIR}:$PATH")
        print(f"  unprivileged user {cluster.user_name}: --kubeconfig={cluster.user_kubeconfig}")
        print(f"  logs: {cluster.log_dir}    Ctrl-C stops it")
        while True:
            time.sleep(1)
            cluster.check_alive()
    except KeyboardInterrupt:
        pass
    except ControlPlaneError as exc:
        print(exc, file=sys.stderr)
        return 1  # the logs stay for reading
    finally:
        cluster.stop()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
