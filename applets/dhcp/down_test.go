package dhcp_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestDelWhileDaemonDown: dhcp's DEL while the daemon is down succeeds
// (the runtime must be able to tear the pod down), says so, and records
// the release; the daemon carries it out when it starts again (the
// server drops the lease) and removes the record. Before, DEL said
// nothing was there to release, and the restarted daemon resumed the
// lease and kept renewing it for a pod that was gone. The pod's
// interface stays for the release to leave from (IPAM DEL runs alone,
// as a main plugin that calls it before deleting its link would).
func TestDelWhileDaemonDown(t *testing.T) {
	l := newMacvlanLab(t)
	l.StartDaemon()
	list := l.R.Conflist(l.macvlanList("1.0.0", "dhcp-down", ""))
	pod := l.R.Pod(t)
	a := l.R.Attach(pod, "eth0")
	res, err := l.R.Add(list, a)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	ip := asCurrent(t, res).IPs[0].Address.IP.String()
	held := func() bool { return strings.Contains(l.serverLeases(), " "+ip+" ") }
	if !held() {
		t.Fatalf("dnsmasq has no lease for %s", ip)
	}
	l.StopDaemon()

	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"dhcp-down","type":"dhcp","ipam":{"type":"dhcp","daemonSocketPath":%q}}`, l.Sock)
	env := []string{"CNI_COMMAND=DEL", "CNI_CONTAINERID=" + a.ContainerID, "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path, "CNI_PATH=" + l.R.Path}
	out, errb, code := l.R.Exec("dhcp", env, []byte(conf))
	if code != 0 {
		t.Fatalf("DEL with the daemon down: %s %s", out, errb)
	}
	if !strings.Contains(string(errb), "carried out when the daemon starts") {
		t.Errorf("DEL does not say what happened to the release: %s", errb)
	}
	pending := filepath.Join(filepath.Dir(l.Sock), "dhcp-release")
	if files, _ := os.ReadDir(pending); len(files) != 1 {
		t.Fatalf("recorded releases: %v, want 1", files)
	}
	if !held() {
		t.Fatalf("the lease went without a daemon?")
	}
	l.StartDaemon()
	testnet.WaitFor(t, 10*time.Second, "dnsmasq to drop the released lease of "+ip, func() bool { return !held() })
	testnet.WaitFor(t, 5*time.Second, "the daemon to remove the release it carried out", func() bool {
		_, err := os.Stat(pending)
		return err != nil
	})
	if err := l.R.Del(list, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}
