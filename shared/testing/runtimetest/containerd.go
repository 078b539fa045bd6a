package runtimetest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// Containerd is a containerd (Debian 1.6.x, config version 2) started by a
// test inside a node netns, with its own root, state, socket and CNI
// directories, and a private mount namespace in which /run/containerd,
// /var/lib/cni, /etc/cni/net.d and /opt/cni/bin are the test's. It stops
// (and its pods, shims and netns mounts go) when the test ends.
type Containerd struct {
	Node    *testnet.NS
	Dir     string
	Socket  string
	ConfDir string // CRI conf_dir (and /etc/cni/net.d for ctr)
	BinDir  string // CRI bin_dir (and /opt/cni/bin for ctr)
	State   string // /var/lib/cni inside: host-local leases, libcni cache
	Log     *bytes.Buffer
	Runtime cri.RuntimeServiceClient
	Images  cri.ImageServiceClient
	mounts  []Mount
	cmd     *exec.Cmd
	conn    *grpc.ClientConn
}

// RequireContainerd skips unless containerd, ctr, runc and a static
// busybox are installed (make test installs them).
func RequireContainerd(t testing.TB) {
	t.Helper()
	testnet.RequireRoot(t)
	for _, bin := range []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (apt-get install containerd runc): %v", bin, err)
		}
	}
	if _, err := os.Stat(Busybox); err != nil {
		t.Skipf("%s not installed (apt-get install busybox-static)", Busybox)
	}
}

const containerdConfig = `version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = %[9]q
        SystemdCgroup = false
`

// StartContainerd writes a config, starts containerd in node and waits for
// its CRI service. bin is the CNI plugin directory.
func StartContainerd(t testing.TB, node *testnet.NS, bin string) *Containerd {
	t.Helper()
	RequireContainerd(t)
	dir, err := os.MkdirTemp("", "cnibox-containerd-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Containerd{
		Node: node, Dir: dir, BinDir: bin,
		Socket:  filepath.Join(dir, "containerd.sock"),
		ConfDir: filepath.Join(dir, "net.d"),
		State:   filepath.Join(dir, "cni-state"),
		Log:     &bytes.Buffer{},
	}
	for _, d := range []string{c.ConfDir, c.State, filepath.Join(dir, "run")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conf := fmt.Sprintf(containerdConfig, filepath.Join(dir, "root"), filepath.Join(dir, "state"),
		c.Socket, c.Socket+".ttrpc", filepath.Join(dir, "opt"), PauseImage,
		bin, c.ConfDir, filepath.Join(dir, "runc"))
	confFile := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// The shims put their sockets under /run/containerd whatever the
	// config says; /etc/cni/net.d and /opt/cni/bin are what "ctr run --cni"
	// reads, fixed in ctr.
	c.mounts = append(StateMounts(c.State),
		Mount{Target: "/run/containerd", Source: filepath.Join(dir, "run")},
		Mount{Target: "/run/netns"}, // pod netns mounts stay private and go with containerd
		Mount{Target: "/etc/cni"}, Mount{Target: "/etc/cni/net.d", Source: c.ConfDir},
		Mount{Target: "/opt"}, Mount{Target: "/opt/cni/bin", Source: bin},
	)
	c.cmd = NodeCommand(node, c.mounts, "containerd", "--config", confFile)
	c.cmd.Stdout, c.cmd.Stderr = c.Log, c.Log
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	t.Cleanup(func() { c.stop(t) })

	c.conn, err = grpc.Dial("unix://"+c.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	c.Runtime = cri.NewRuntimeServiceClient(c.conn)
	c.Images = cri.NewImageServiceClient(c.conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := c.Runtime.Version(ctx, &cri.VersionRequest{})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) || c.cmd.ProcessState != nil {
			t.Fatalf("containerd did not serve CRI: %v\n%s", err, c.Log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

// Ctr runs ctr against this containerd, in the node and its mount
// namespace (so "ctr run --cni" finds the test's CNI dirs).
func (c *Containerd) Ctr(args ...string) (string, error) {
	args = append([]string{"--address", c.Socket}, args...)
	cmd := NodeCommand(c.Node, c.mounts, "ctr", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args[2:], " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// ImportImage builds the busybox pause image and imports it into the CRI
// namespace (k8s.io), where it serves as sandbox image and container image.
func (c *Containerd) ImportImage(t testing.TB) {
	t.Helper()
	tarball := BuildImage(t, c.Dir)
	if out, err := c.Ctr("-n", "k8s.io", "images", "import", "--no-unpack", tarball); err != nil {
		t.Fatalf("import %s: %v\n%s", tarball, err, out)
	}
	// The CRI plugin learns of imported images from containerd's events,
	// asynchronously: until it has, RunPodSandbox would try to pull.
	deadline := time.Now().Add(30 * time.Second)
	for {
		cx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := c.Images.ImageStatus(cx, &cri.ImageStatusRequest{Image: &cri.ImageSpec{Image: PauseImage}})
		cancel()
		if err == nil && st.Image != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("CRI never saw the imported image %s: %v", PauseImage, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *Containerd) stop(t testing.TB) {
	if c.conn != nil {
		c.conn.Close()
	}
	if c.cmd.Process != nil {
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	if t.Failed() {
		t.Logf("containerd log:\n%s", lastLines(c.Log.String(), 60))
	}
	c.killLeftovers()
	unmountUnder(c.Dir)
	os.RemoveAll(c.Dir)
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// unmountUnder lazily unmounts whatever is still mounted below dir (the
// snapshotter's overlays, if containerd died without cleaning up).
func unmountUnder(dir string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var targets []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			targets = append(targets, f[4])
		}
	}
	for i := len(targets) - 1; i >= 0; i-- {
		syscall.Unmount(targets[i], syscall.MNT_DETACH)
	}
}

func runcDelete(root, id string) {
	exec.Command("runc", "--root", root, "delete", "--force", id).Run()
}
