package runtimetest_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/runtimetest"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// BenchmarkCRIPodCycle measures what kubelet waits for per pod through
// containerd: RunPodSandbox (CNI ADD of loopback and of the Kubernetes-style
// chain bridge, host-local, portmap, bandwidth, with a hostPort and
// bandwidth annotations), StopPodSandbox (DEL) and RemovePodSandbox, with
// cnibox's plugin directory and with the reference plugins'. runc's own
// share of the time is the same on both sides.
//
//	go test -run '^$' -bench CRIPodCycle -benchtime 20x ./shared/testing/runtimetest/
func BenchmarkCRIPodCycle(b *testing.B) {
	runtimetest.RequireContainerd(b)
	for _, side := range []string{"cnibox", "reference"} {
		b.Run(side, func(b *testing.B) {
			node := testnet.NewNS(b, "node")
			dir := runtimetest.InstallPlugins(b).Dir
			if side == "reference" {
				dir = testnet.ReferenceDir()
			}
			c := runtimetest.StartContainerd(b, node, dir)
			c.ImportImage(b)
			if err := os.WriteFile(filepath.Join(c.ConfDir, "10-kubernetes.conflist"), shipped(b, "kubernetes.conflist"), 0o644); err != nil {
				b.Fatal(err)
			}
			c.WaitNetworkReady(b)
			annotations := map[string]string{"kubernetes.io/ingress-bandwidth": "100M", "kubernetes.io/egress-bandwidth": "100M"}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				pod := c.RunPod(b, "bench", runtimetest.Ports(runtimetest.PortMapping(18080, 80)), annotations)
				pod.Stop(b)
			}
		})
	}
}

// BenchmarkChainAddDel is the CNI share of a pod alone: libcni ADD and DEL
// of the shipped Kubernetes-style chain (bridge, host-local, portmap with
// a hostPort, bandwidth with limits), as containerd calls it, with cnibox
// and with the reference plugins, in a node netns. libcni execs each
// plugin through the harness's private-mount wrapper (unshare + sh), the
// same cost on both sides.
//
//	go test -run '^$' -bench ChainAddDel -benchtime 50x ./shared/testing/runtimetest/
func BenchmarkChainAddDel(b *testing.B) {
	testnet.RequireRoot(b)
	// At 1.0.0 on both sides: Debian's reference plugins stop there.
	conf := strings.Replace(string(shipped(b, "kubernetes.conflist")), `"cniVersions": ["1.0.0", "1.1.0"],`, "", 1)
	for _, side := range []string{"cnibox", "reference"} {
		b.Run(side, func(b *testing.B) {
			r := testnet.NewRuntime(b)
			if side == "reference" {
				r.SetPath(testnet.ReferenceDir())
			} else {
				r.SetPath(runtimetest.InstallPlugins(b).Dir)
			}
			list := r.Conflist(conf)
			pod := r.Pod(b)
			caps := map[string]any{
				"portMappings": []map[string]any{{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}},
				"bandwidth":    map[string]any{"ingressRate": 100000000, "ingressBurst": 1000000, "egressRate": 100000000, "egressBurst": 1000000},
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				a := r.Attach(pod, "eth0")
				a.Caps = caps
				if _, err := r.Add(list, a); err != nil {
					b.Fatalf("ADD: %v", err)
				}
				if err := r.Del(list, a); err != nil {
					b.Fatalf("DEL: %v", err)
				}
			}
		})
	}
}
