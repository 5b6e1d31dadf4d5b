// Command kubelet is the upstream kubelet, built from the same k8s.io/kubernetes module as the test
// control plane (tests/k8s/controlplane), for the real node in tests/k8s/test_real_node.py.
package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	"k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	// NewKubeletCommand needs a non-nil context; cancelling it is how the kubelet is stopped
	// in-process, which a test never does (it sends SIGTERM).
	os.Exit(cli.Run(app.NewKubeletCommand(context.Background())))
}
