package runtimetest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// Mount is one mount of a private mount namespace: Source bound onto
// Target, or a fresh tmpfs on Target when Source is empty. A missing bind
// target is created, so callers put it under an earlier tmpfs mount.
type Mount struct {
	Target string
	Source string
}

// NodeCommand returns a command that runs name inside node's network
// namespace and a private mount namespace with mounts applied in order.
// Every runtime and its plugins run this way: the runtime's netns is the
// node's, and its default paths are the test's directories. Propagation is
// "slave": nothing mounted inside leaks out, and pod netns the test mounts
// later under /run/netns are still seen inside (a dhcp daemon needs them).
func NodeCommand(node *testnet.NS, mounts []Mount, name string, args ...string) *exec.Cmd {
	var script strings.Builder
	script.WriteString("set -e\n")
	script.WriteString(cgroupMounts())
	for _, m := range mounts {
		if m.Source == "" {
			fmt.Fprintf(&script, "mount -t tmpfs cnibox-test %q\n", m.Target)
		} else {
			fmt.Fprintf(&script, "[ -e %[1]q ] || mkdir -p %[1]q\nmount --bind %[2]q %[1]q\n", m.Target, m.Source)
		}
	}
	script.WriteString(`exec "$@"`)
	argv := []string{"netns", "exec", node.Name, "unshare", "--mount", "--propagation", "slave",
		"sh", "-c", script.String(), "node-command", name}
	return exec.Command("ip", append(argv, args...)...)
}

// StateMounts isolates CNI state: /var/lib is an empty tmpfs whose cni
// directory is state (host-local leases, libcni's result cache).
func StateMounts(state string) []Mount {
	return []Mount{{Target: "/var/lib"}, {Target: "/var/lib/cni", Source: state}}
}

// cgroupMounts gives back the cgroup mounts that "ip netns exec" loses
// when it mounts a fresh /sys for the netns: runc needs them. It repeats
// the test process's own /sys/fs/cgroup mounts (v1 hierarchies, the v2
// one, or both); mounting an existing hierarchy again reuses it.
func cgroupMounts() string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	var b strings.Builder
	for _, line := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 || !strings.HasPrefix(f[4], "/sys/fs/cgroup") {
			continue
		}
		target, fstype, opts := f[4], g[0], g[2]
		switch fstype {
		case "tmpfs":
			fmt.Fprintf(&b, "mount -t tmpfs -o mode=755 cgroup %q\n", target)
		case "cgroup", "cgroup2":
			var keep []string
			for _, o := range strings.Split(opts, ",") {
				if o != "rw" && o != "ro" {
					keep = append(keep, o)
				}
			}
			o := strings.Join(keep, ",")
			if o == "" {
				o = "defaults"
			}
			fmt.Fprintf(&b, "mkdir -p %[1]q\nmount -t %[2]s -o %[3]s %[2]s %[1]q\n", target, fstype, o)
		}
	}
	return b.String()
}
