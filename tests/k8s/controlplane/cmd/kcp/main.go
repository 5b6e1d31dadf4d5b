// Command kcp is one binary holding the Kubernetes control plane the tests need: kube-apiserver,
// kube-controller-manager, kube-scheduler, kubectl and etcd. One binary links once instead of five
// times, which is most of a warm rebuild. It dispatches on the name it was called by (build.sh
// makes symlinks) or, failing that, on its first argument: `kcp kube-apiserver --flags...`.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	_ "time/tzdata" // CronJob time zones, as in the upstream mains

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

var commands = map[string]func(args []string) int{
	"kube-apiserver": func([]string) int { return cli.Run(apiserver.NewAPIServerCommand()) },
	"kube-controller-manager": func([]string) int {
		return cli.Run(controllermanager.NewControllerManagerCommand())
	},
	"kube-scheduler": func([]string) int { return cli.Run(scheduler.NewSchedulerCommand()) },
	"kubectl":        runKubectl,
	"etcd":           runEtcd,
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := commands[name]; !ok && len(os.Args) > 1 {
		// Called as `kcp <component> ...`: shift the component name off so that cobra sees
		// the same arguments it would as a standalone binary.
		name = os.Args[1]
		os.Args = append([]string{name}, os.Args[2:]...)
	}
	run, ok := commands[name]
	if !ok {
		names := make([]string, 0, len(commands))
		for n := range commands {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: kcp COMPONENT [flags]\ncomponents: %v\n", names)
		os.Exit(2)
	}
	os.Exit(run(os.Args[1:]))
}
