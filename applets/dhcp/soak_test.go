package dhcp

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// daemonUsage is what the daemon holds: resident memory (KiB), open
// files, goroutines and leases.
type daemonUsage struct{ rssKiB, fds, goroutines, leases int }

func usageOf(t *testing.T, pid int, sock string) daemonUsage {
	t.Helper()
	var u daemonUsage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			u.rssKiB, _ = strconv.Atoi(strings.Fields(rest)[0])
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	u.fds = len(fds)
	c, err := dialRPC(sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var st daemonStats
	if err := c.Call("DHCP.Stats", &callArgs{}, &st); err != nil {
		t.Fatal(err)
	}
	u.goroutines, u.leases = st.Goroutines, st.Leases
	return u
}

// TestDaemonSoak: the daemon serves ADD/DEL cycles (macvlan pods, dhcp
// IPAM, a real DHCP server) and holds steady: after the cycles it has as
// many open files and goroutines as after the warm-up, no lease, and its
// resident memory has not grown by more than 16 MiB. CNIBOX_DHCP_SOAK
// sets the number of cycles (make soak: 2000); make test runs 40.
func TestDaemonSoak(t *testing.T) {
	cycles := 40
	if s := os.Getenv("CNIBOX_DHCP_SOAK"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("CNIBOX_DHCP_SOAK=%q", s)
		}
		cycles = n
	} else if testing.Short() {
		t.Skip("-short: no soak")
	}
	r := testnet.NewRuntime(t)
	l := testnet.NewDHCPLab(t, r, "10.98.0.0/24", false)
	l.StartDaemon()
	list := r.Conflist(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"dhcp-soak","plugins":[{"type":"macvlan","master":"uplink","mode":"bridge",
		"ipam":{"type":"dhcp","daemonSocketPath":%q}}]}`, l.Sock))
	pid := l.Daemon.Process.Pid
	pod := r.Pod(t)
	cycle := func(i int) {
		a := r.Attach(pod, "eth0")
		if _, err := r.Add(list, a); err != nil {
			t.Fatalf("cycle %d: ADD: %v", i, err)
		}
		if err := r.Del(list, a); err != nil {
			t.Fatalf("cycle %d: DEL: %v", i, err)
		}
	}
	for i := 0; i < 10; i++ {
		cycle(i)
	}
	before := usageOf(t, pid, l.Sock)
	start := time.Now()
	for i := 0; i < cycles; i++ {
		cycle(i)
		if (i+1)%500 == 0 {
			t.Logf("after %d cycles: %+v", i+1, usageOf(t, pid, l.Sock))
		}
	}
	// Goroutines of a released lease may take a moment to return.
	var after daemonUsage
	for try := 0; try < 50; try++ {
		if after = usageOf(t, pid, l.Sock); after.goroutines <= before.goroutines {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("dhcp daemon over %d ADD/DEL cycles (%v): RSS %d -> %d KiB, FDs %d -> %d, goroutines %d -> %d, leases %d -> %d",
		cycles, time.Since(start).Round(time.Second), before.rssKiB, after.rssKiB, before.fds, after.fds,
		before.goroutines, after.goroutines, before.leases, after.leases)
	if after.fds > before.fds || after.goroutines > before.goroutines || after.leases != 0 || after.rssKiB > before.rssKiB+16<<10 {
		t.Errorf("the daemon grew: %+v -> %+v", before, after)
	}
}
