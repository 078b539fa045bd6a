package runtimetest_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cnibox/cnibox/shared/install"
	"github.com/cnibox/cnibox/shared/testing/runtimetest"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// copyReference fills dir with copies of the reference plugins, as a node
// that installed containernetworking-plugins has them in /opt/cni/bin.
func copyReference(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(testnet.ReferenceDir())
	if err != nil || len(entries) == 0 {
		t.Skipf("no reference plugins in %s: %v", testnet.ReferenceDir(), err)
	}
	os.MkdirAll(dir, 0o755)
	var names []string
	for _, e := range entries {
		in, err := os.Open(filepath.Join(testnet.ReferenceDir(), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out, err := os.OpenFile(filepath.Join(dir, e.Name()), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(out, in)
		in.Close()
		out.Close()
		names = append(names, e.Name())
	}
	return names
}

// version runs plugin's VERSION as a runtime would and reports a failure
// unless it answered with a valid VERSION result.
func version(plugin string) error {
	cmd := exec.Command(plugin)
	cmd.Env = []string{"CNI_COMMAND=VERSION", "CNI_PATH=" + filepath.Dir(plugin)}
	cmd.Stdin = bytes.NewReader([]byte(`{"cniVersion":"1.0.0"}`))
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%s VERSION: %w: %s", plugin, err, out)
	}
	var info struct {
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(out, &info); err != nil || len(info.SupportedVersions) == 0 {
		return fmt.Errorf("%s VERSION: bad answer %q", plugin, out)
	}
	return nil
}

// TestInstallOverReferenceWhileCalled installs cnibox over a directory of
// reference plugins, and then re-installs it again and again, while
// callers exec every plugin name of the directory in a loop and a runtime
// runs ADD/DEL of a network from it: no call may ever find a missing,
// half-written or non-executable plugin. Names cnibox does not have stay
// the reference plugins.
func TestInstallOverReferenceWhileCalled(t *testing.T) {
	r := testnet.NewRuntime(t)
	dir := filepath.Join(t.TempDir(), "opt-cni-bin")
	names := copyReference(t, dir)
	ours := map[string]bool{}
	for _, a := range testnet.Applets(t) {
		ours[a] = true
	}
	r.SetPath(dir)
	list := r.Conflist(`{"cniVersion":"1.0.0","name":"install-loop","plugins":[{"type":"loopback"}]}`)

	stop := make(chan struct{})
	var calls, failures atomic.Int64
	var mu sync.Mutex
	var firstErrs []string
	fail := func(err error) {
		failures.Add(1)
		mu.Lock()
		if len(firstErrs) < 5 {
			firstErrs = append(firstErrs, err.Error())
		}
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := version(filepath.Join(dir, names[i%len(names)])); err != nil {
					fail(err)
				}
				calls.Add(1)
			}
		}(w)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		pod := r.Pod(t)
		for {
			select {
			case <-stop:
				return
			default:
			}
			a := r.Attach(pod, "lo")
			if _, err := r.Add(list, a); err != nil {
				fail(fmt.Errorf("ADD: %w", err))
			}
			if err := r.Del(list, a); err != nil {
				fail(fmt.Errorf("DEL: %w", err))
			}
			calls.Add(2)
		}
	}()

	bin := testnet.Binary(t)
	const installs = 15
	start := time.Now()
	for i := 0; i < installs; i++ {
		if out, err := exec.Command(bin, "install", "--dir", dir).CombinedOutput(); err != nil {
			t.Errorf("install %d: %v: %s", i, err, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d installs in %v while %d plugin calls ran; %d failed", installs, time.Since(start).Round(time.Millisecond), calls.Load(), failures.Load())
	if failures.Load() > 0 {
		t.Errorf("%d calls failed during install, first: %v", failures.Load(), firstErrs)
	}

	// After: every applet name is a cnibox applet entry, every other name
	// is still the reference plugin, and all of them answer.
	for _, n := range names {
		switch k := install.Inspect(dir, n); {
		case ours[n] && k != install.Script:
			t.Errorf("%s is not a cnibox applet entry after install: %v", n, k)
		case !ours[n] && k != install.Foreign:
			t.Errorf("%s (not a cnibox applet) was replaced by cnibox's %v", n, k)
		}
		if err := version(filepath.Join(dir, n)); err != nil {
			t.Error(err)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".*"))
	if len(leftovers) > 0 {
		t.Errorf("install left temporary files: %v", leftovers)
	}
}

// TestInstallWhileContainerdRunsPods is the same with a real runtime:
// containerd's bin_dir starts as the reference plugins, and cnibox is
// installed over it, then re-installed, while kubelet-style pod cycles
// (RunPodSandbox, StopPodSandbox, RemovePodSandbox) go on. Every pod
// must start and go, whichever side served it.
func TestInstallWhileContainerdRunsPods(t *testing.T) {
	runtimetest.RequireContainerd(t)
	node := testnet.NewNS(t, "node")
	dir := filepath.Join(t.TempDir(), "opt-cni-bin")
	copyReference(t, dir)
	c := runtimetest.StartContainerd(t, node, dir)
	c.ImportImage(t)
	// 1.0.0: the reference plugins serve the first pods.
	conf := strings.Replace(string(shipped(t, "kubernetes.conflist")), `"cniVersions": ["1.0.0", "1.1.0"],`, "", 1)
	if err := os.WriteFile(filepath.Join(c.ConfDir, "10-kubernetes.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	c.WaitNetworkReady(t)

	done := make(chan error, 1)
	go func() {
		bin := testnet.Binary(t)
		for i := 0; i < 10; i++ {
			if out, err := exec.Command(bin, "install", "--dir", dir).CombinedOutput(); err != nil {
				done <- fmt.Errorf("install %d: %v: %s", i, err, out)
				return
			}
			time.Sleep(300 * time.Millisecond)
		}
		done <- nil
	}()
	pods := 0
	for running := true; running || pods < 3; pods++ {
		pod := c.RunPod(t, fmt.Sprintf("p%d", pods), runtimetest.Ports(runtimetest.PortMapping(18080, 80)), nil)
		if !strings.HasPrefix(pod.IP, "10.244.1.") {
			t.Errorf("pod %d IP %q", pods, pod.IP)
		}
		pod.Stop(t)
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			running = false
		default:
		}
	}
	t.Logf("%d pods started and removed while cnibox was installed over the reference plugins 10 times", pods)
	if k := install.Inspect(dir, "bridge"); k != install.Script {
		t.Errorf("bridge is %v after install", k)
	}
}
