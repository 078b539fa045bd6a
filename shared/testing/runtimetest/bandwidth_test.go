package runtimetest_test

import (
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/install"
	"github.com/cnibox/cnibox/shared/testing/runtimetest"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// shippedConflist reads a file of the repository's conflists/.
func shippedConflist(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testnet.RepoRoot(), "conflists", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wrapRequests puts a wrapper in front of the plugin dir's bandwidth that
// saves each invocation's CNI_* environment and stdin under a directory
// (as <n>.<verb>.env and <n>.<verb>.json) before running the real plugin,
// so a test sees the exact request the runtime built.
func wrapRequests(t *testing.T, plugins *runtimetest.Plugins, plugin string) string {
	t.Helper()
	logDir, realDir := t.TempDir(), t.TempDir()
	path := filepath.Join(plugins.Dir, plugin)
	target, err := os.Readlink(path)
	if err != nil {
		if target = install.EntryInterpreter(path); target == "" {
			t.Fatalf("%s is neither a link nor an applet entry: %v", path, err)
		}
	}
	if !filepath.IsAbs(target) {
		target = filepath.Join(plugins.Dir, target)
	}
	// The real plugin keeps its name: cnibox picks the applet by argv[0].
	real := filepath.Join(realDir, plugin)
	if err := os.Symlink(target, real); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`#!/bin/sh
n=$(date +%%s%%N).$CNI_COMMAND
env | grep '^CNI_' > %[1]s/$n.env
cat > %[1]s/$n.json
exec %[2]s < %[1]s/$n.json
`, logDir, real)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return logDir
}

// bandwidthRequest is one saved bandwidth invocation.
type bandwidthRequest struct {
	Env   string
	Stdin []byte
	Conf  struct {
		Name          string
		RuntimeConfig struct {
			Bandwidth json.RawMessage `json:"bandwidth"`
		} `json:"runtimeConfig"`
		PrevResult struct {
			Interfaces []struct{ Name, Sandbox string }
		} `json:"prevResult"`
	}
}

// requestOf returns the saved ADD of container id.
func requestOf(t *testing.T, logDir, id string) *bandwidthRequest {
	t.Helper()
	envs, _ := filepath.Glob(filepath.Join(logDir, "*.ADD.env"))
	for _, e := range envs {
		env, err := os.ReadFile(e)
		if err != nil || !strings.Contains(string(env), "CNI_CONTAINERID="+id+"\n") {
			continue
		}
		r := &bandwidthRequest{Env: string(env)}
		if r.Stdin, err = os.ReadFile(strings.TrimSuffix(e, ".env") + ".json"); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(r.Stdin, &r.Conf); err != nil {
			t.Fatalf("bandwidth stdin: %v: %s", err, r.Stdin)
		}
		return r
	}
	t.Fatalf("no bandwidth ADD for container %s in %s", id, logDir)
	return nil
}

// rootTBF reads the root tbf of dev in ns.
func rootTBF(t *testing.T, ns *testnet.NS, dev string) *netlink.Tbf {
	t.Helper()
	var tbf *netlink.Tbf
	err := ns.Do(func() error {
		l, err := netlinksafe.LinkByName(dev)
		if err != nil {
			return err
		}
		qs, err := netlinksafe.QdiscList(l)
		for _, q := range qs {
			if q, ok := q.(*netlink.Tbf); ok && q.Attrs().Parent == netlink.HANDLE_ROOT {
				tbf = q
			}
		}
		return err
	})
	if err != nil || tbf == nil {
		t.Fatalf("root tbf of %s: %v (none: %v)", dev, err, tbf == nil)
	}
	return tbf
}

// bucketBytes is how many bytes a tbf lets through at line rate when full.
func bucketBytes(q *netlink.Tbf) int64 {
	return int64(float64(q.Buffer) / netlink.TickInUsec() * float64(q.Rate) / 1e6)
}

// waitIdle waits until the tbfs of devs hold no packets, so one direction's
// leftover queue does not delay the next transfer's handshake and ACKs.
func waitIdle(t *testing.T, ns *testnet.NS, devs ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		busy := ""
		for _, d := range devs {
			if out, _ := ns.Run("tc", "-s", "qdisc", "show", "dev", d, "root"); !strings.Contains(out, "backlog 0b 0p") {
				busy = out
			}
		}
		if busy == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queues never drained: %s", busy)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// shapedRate sends TCP from one netns to a listener on listenIP in another
// and returns the rate in bits/s the receiver saw over measure, once the
// token bucket's initial burst (bucket bytes, which pass at line rate) has
// gone through and a 300 ms window ran below twice the limit: the rate of
// the shaped flow, not of the burst.
func shapedRate(t *testing.T, from, to *testnet.NS, listenIP string, bucket int64, limit float64, measure time.Duration) float64 {
	t.Helper()
	var ln net.Listener
	if err := to.Do(func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(listenIP, "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		bits float64
		err  error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Minute))
		buf := make([]byte, 256<<10)
		var total, mark int64
		var since time.Time
		phase := 0 // 0: burst, 1: waiting for shaping, 2: measuring
		for {
			k, err := c.Read(buf)
			if err != nil {
				done <- result{err: fmt.Errorf("after %d bytes (phase %d): %w", total, phase, err)}
				return
			}
			total += int64(k)
			now := time.Now()
			switch {
			case phase == 0 && total >= bucket*9/10:
				phase, mark, since = 1, total, now
			case phase == 1 && now.Sub(since) >= 300*time.Millisecond:
				if float64(total-mark)*8/now.Sub(since).Seconds() < 2*limit {
					phase = 2
				}
				mark, since = total, now
			case phase == 2 && now.Sub(since) >= measure:
				done <- result{bits: float64(total-mark) * 8 / now.Sub(since).Seconds()}
				return
			}
		}
	}()
	var c net.Conn
	if err := from.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", ln.Addr().String(), 10*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// A small send buffer keeps the queue in the tbf short, so that it
	// drains soon after the receiver hangs up.
	c.(*net.TCPConn).SetWriteBuffer(32 << 10)
	c.SetDeadline(time.Now().Add(3 * time.Minute))
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				return // the receiver is done (or failed: it says so)
			}
		}
	}()
	res := <-done
	c.Close()
	if res.err != nil {
		t.Fatalf("receive: %v", res.err)
	}
	return res.bits
}

// TestContainerdBandwidthAnnotations: pods annotated with
// kubernetes.io/ingress-bandwidth and egress-bandwidth of 1M, 10M and 100M
// start through containerd's CRI on the shipped Kubernetes network (bandwidth
// with the bandwidth capability), as kubelet starts them. For each pod the
// request containerd built is checked (runtimeConfig.bandwidth with the
// annotation's rate and a burst of MaxUint32 bits, read from a wrapper in
// front of bandwidth), the qdiscs have that rate, and bulk TCP from the
// node into the pod and from the pod to the node runs at the annotation's
// rate (0.5x to 1.3x) once the bucket's initial burst has passed.
func TestContainerdBandwidthAnnotations(t *testing.T) {
	if testing.Short() {
		t.Skip("moves traffic through three pods' limits (~40 s)")
	}
	runtimetest.RequireContainerd(t)
	node := testnet.NewNS(t, "node")
	plugins := runtimetest.InstallPlugins(t)
	t.Logf("who runs what: %s", plugins.Describe("bridge", "host-local", "portmap", "bandwidth"))
	logDir := wrapRequests(t, plugins, "bandwidth")
	c := runtimetest.StartContainerd(t, node, plugins.Dir)
	c.ImportImage(t)
	if err := os.WriteFile(filepath.Join(c.ConfDir, "10-kubernetes.conflist"), shippedConflist(t, "kubernetes.conflist"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.WaitNetworkReady(t)
	const gateway = "10.244.1.1" // the shipped network's bridge

	for _, a := range []struct {
		annotation string
		rate       uint64
		measure    time.Duration
	}{{"1M", 1_000_000, 2 * time.Second}, {"10M", 10_000_000, 2500 * time.Millisecond}, {"100M", 100_000_000, 2500 * time.Millisecond}} {
		t.Run(a.annotation, func(t *testing.T) {
			name := "bw" + strings.ToLower(a.annotation)
			pod := c.RunPod(t, name, nil, map[string]string{
				"kubernetes.io/ingress-bandwidth": a.annotation,
				"kubernetes.io/egress-bandwidth":  a.annotation,
			})
			defer pod.Stop(t)

			req := requestOf(t, logDir, pod.ID)
			t.Logf("containerd's bandwidth request for %s: runtimeConfig.bandwidth = %s", a.annotation, req.Conf.RuntimeConfig.Bandwidth)
			if testing.Verbose() {
				t.Logf("environment:\n%sstdin: %s", req.Env, req.Stdin)
			}
			var bw map[string]uint64
			json.Unmarshal(req.Conf.RuntimeConfig.Bandwidth, &bw)
			got := map[string]uint64{}
			for k, v := range bw {
				got[strings.ToLower(k)] = v
			}
			if got["ingressrate"] != a.rate || got["egressrate"] != a.rate || got["ingressburst"] != math.MaxUint32 || got["egressburst"] != math.MaxUint32 {
				t.Errorf("runtimeConfig.bandwidth = %s, want rates %d and bursts %d (MaxUint32)", req.Conf.RuntimeConfig.Bandwidth, a.rate, uint64(math.MaxUint32))
			}

			host := ""
			for _, i := range req.Conf.PrevResult.Interfaces {
				if i.Sandbox == "" && strings.HasPrefix(i.Name, "veth") {
					host = i.Name
				}
			}
			sum := sha512.Sum512([]byte(req.Conf.Name + pod.ID))
			ifb := ("bwp" + hex.EncodeToString(sum[:]))[:15]
			in, out := rootTBF(t, node, host), rootTBF(t, node, ifb)
			for dir, q := range map[string]*netlink.Tbf{"ingress (" + host + ")": in, "egress (" + ifb + ")": out} {
				if q.Rate != a.rate/8 {
					t.Errorf("%s tbf rate %d B/s, want %d", dir, q.Rate, a.rate/8)
				}
			}
			tc, _ := node.Run("tc", "qdisc", "show", "dev", host, "root")
			t.Logf("installed: %s", strings.TrimSpace(tc))

			podNS := &testnet.NS{Name: "pod " + name, Path: fmt.Sprintf("/proc/%d/ns/net", pod.PID)}
			into := shapedRate(t, node, podNS, pod.IP, bucketBytes(in), float64(a.rate), a.measure)
			waitIdle(t, node, host, ifb)
			outOf := shapedRate(t, podNS, node, gateway, bucketBytes(out), float64(a.rate), a.measure)
			waitIdle(t, node, host, ifb)
			t.Logf("annotation %s: into the pod %.3f Mbit/s (%.2fx), out of it %.3f Mbit/s (%.2fx)",
				a.annotation, into/1e6, into/float64(a.rate), outOf/1e6, outOf/float64(a.rate))
			for dir, r := range map[string]float64{"into the pod": into, "out of the pod": outOf} {
				if r < 0.5*float64(a.rate) || r > 1.3*float64(a.rate) {
					t.Errorf("%s: %.3f Mbit/s, want 0.5x to 1.3x of %s", dir, r/1e6, a.annotation)
				}
			}
		})
	}
}
