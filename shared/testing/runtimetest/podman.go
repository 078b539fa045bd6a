package runtimetest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// Podman runs Debian's podman 4.x with its CNI backend on a node. Every
// podman command runs in the node netns and in one private mount
// namespace, held open by a sleeping process, in which /var/lib/cni (libcni
// cache, host-local leases) and /run are the test's: so the netns a "podman run" makes is still there for the
// "podman rm" that tears it down, and nothing reaches the machine's.
type Podman struct {
	Node    *testnet.NS
	Dir     string
	ConfDir string // network_config_dir
	BinDir  string // cni_plugin_dirs
	State   string // /var/lib/cni inside
	Env     []string
	holder  *exec.Cmd
}

// RequirePodman skips unless podman, conmon and runc are installed.
func RequirePodman(t testing.TB) {
	t.Helper()
	testnet.RequireRoot(t)
	for _, bin := range []string{"podman", "conmon", "runc", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			if _, err2 := os.Stat("/usr/libexec/podman/" + bin); err2 == nil {
				continue
			}
			t.Skipf("%s not installed (apt-get install podman conmon runc): %v", bin, err)
		}
	}
	if _, err := os.Stat(Busybox); err != nil {
		t.Skipf("%s not installed (apt-get install busybox-static)", Busybox)
	}
}

// The settings podman needs to start containers in this sandbox, apart
// from networking: cgroupfs (no systemd here), events to a file (no
// journald), runc, an open-files limit within the sandbox's hard limit
// and processes (podman 4 raises RLIMIT_NOFILE and RLIMIT_NPROC past it, and runc fails:
// "error setting rlimit type 7: operation not permitted"), and every path
// under the test's directory.
const containersConf = `[containers]
log_driver = "k8s-file"
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[network]
network_backend = "cni"
cni_plugin_dirs = [%[1]q]
network_config_dir = %[2]q
default_network = "podman"
default_subnet = "10.88.0.0/16"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %[3]q
runtime = "runc"
tmp_dir = %[4]q
static_dir = %[5]q
volume_path = %[6]q
no_pivot_root = false
`

const storageConf = `[storage]
driver = "overlay"
graphroot = %[1]q
runroot = %[2]q
`

// StartPodman configures podman for the node with bin as its only CNI
// plugin directory.
func StartPodman(t testing.TB, node *testnet.NS, bin string) *Podman {
	t.Helper()
	RequirePodman(t)
	dir, err := os.MkdirTemp("", "cnibox-podman-")
	if err != nil {
		t.Fatal(err)
	}
	p := &Podman{Node: node, Dir: dir, BinDir: bin,
		ConfDir: filepath.Join(dir, "net.d"), State: filepath.Join(dir, "cni-state")}
	for _, d := range []string{p.ConfDir, p.State, filepath.Join(dir, "tmp"), filepath.Join(dir, "run"), filepath.Join(dir, "netns")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, content string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	cc := write("containers.conf", fmt.Sprintf(containersConf, bin, p.ConfDir, filepath.Join(dir, "events.log"),
		filepath.Join(dir, "tmp"), filepath.Join(dir, "static"), filepath.Join(dir, "volumes")))
	sc := write("storage.conf", fmt.Sprintf(storageConf, filepath.Join(dir, "storage"), filepath.Join(dir, "run", "storage")))
	// CONTAINERS_CONF replaces every system containers.conf; the
	// registries file is empty: no registry is reachable anyway.
	p.Env = append(os.Environ(), "CONTAINERS_CONF="+cc, "CONTAINERS_STORAGE_CONF="+sc,
		"CONTAINERS_REGISTRIES_CONF="+write("registries.conf", ""), "XDG_CONFIG_HOME="+filepath.Join(dir, "xdg"))

	// A fresh /run: podman's netns mounts, locks and runtime files
	// (/run/netns, /run/libpod, /run/containers, /run/cni) stay here.
	mounts := append(StateMounts(p.State), Mount{Target: "/run"},
		Mount{Target: "/run/netns", Source: filepath.Join(dir, "netns")})
	p.holder = NodeCommand(node, mounts, "sleep", "2147483647")
	var holderOut bytes.Buffer
	p.holder.Stdout, p.holder.Stderr = &holderOut, &holderOut
	p.holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.stop(t) })
	// ip, unshare and sh all exec: the pid ends up as sleep, in the
	// private mount namespace.
	self, _ := os.Readlink("/proc/self/ns/mnt")
	for i := 0; ; i++ {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.holder.Process.Pid))
		mnt, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", p.holder.Process.Pid))
		if strings.HasSuffix(exe, "sleep") && mnt != self {
			break
		}
		if i > 100 {
			t.Fatalf("podman's mount namespace holder did not start (%s): %s", exe, holderOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// Command returns a podman command in the node and the shared mount
// namespace.
func (p *Podman) Command(args ...string) *exec.Cmd {
	return p.InNode("podman", args...)
}

// InNode returns a command that runs in podman's node netns and mount
// namespace (for a daemon podman's plugins talk to, such as "dhcp
// daemon" on /run/cni/dhcp.sock). nsenter execs it: the pid is its own.
func (p *Podman) InNode(name string, args ...string) *exec.Cmd {
	pid := strconv.Itoa(p.holder.Process.Pid)
	cmd := exec.Command("nsenter", append([]string{"--target", pid, "--mount", "--net", "--", name}, args...)...)
	cmd.Env = p.Env
	return cmd
}

// Run runs podman and returns stdout; stderr is returned apart, since
// podman warns there about networks it skipped.
func (p *Podman) Run(args ...string) (stdout, stderr string, err error) {
	cmd := p.Command(args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		return o.String(), e.String(), fmt.Errorf("podman %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(e.Bytes()))
	}
	return o.String(), e.String(), nil
}

// MustRun is Run that fails the test on error or on any warning about a
// CNI network (a network podman silently skipped is a failure).
func (p *Podman) MustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, err := p.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(errOut, "CNI") || strings.Contains(errOut, "level=warn") || strings.Contains(errOut, "level=error") {
		t.Errorf("podman %s warned: %s", strings.Join(args, " "), errOut)
	}
	return out
}

// LoadImage loads the busybox image into podman's storage.
func (p *Podman) LoadImage(t testing.TB) {
	t.Helper()
	tarball := BuildImage(t, p.Dir)
	p.MustRun(t, "load", "-q", "-i", tarball)
}

func (p *Podman) stop(t testing.TB) {
	// Remove every container first: that is the CNI DEL.
	if out, _, err := p.Run("rm", "--all", "--force", "--time", "0"); err != nil {
		t.Logf("podman rm --all: %v %s", err, out)
	}
	p.Run("system", "reset", "--force")
	syscall.Kill(-p.holder.Process.Pid, syscall.SIGKILL)
	p.holder.Wait()
	killUnder(p.Dir)
	unmountUnder(p.Dir)
	os.RemoveAll(p.Dir)
}
