package reliability

import (
	"strings"
	"sync"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestParallelAdd: many pods of the default chain ADD at the same moment,
// racing on one bridge (made by whichever comes first), one host-local
// store, the shared firewall, masquerade and port-mapping chains and the
// IFB names. All succeed with distinct addresses, every pod's rules are
// there (CHECK, which verifies them, passes for each; the node reaches
// each), one IFB per pod; then they DEL at the same moment and the node is
// as it was before the first.
func TestParallelAdd(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	t.Parallel()
	const n = 12
	r := testnet.NewRuntime(t)
	list := defaultList(t, r)
	snap := r.Snapshotter()
	before := snap.Take(t)

	atts := make([]*testnet.Attachment, n)
	results := make([]*current.Result, n)
	for i := range atts {
		atts[i] = r.Attach(r.Pod(t), "eth0")
		caps(atts[i], 200+i)
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range atts {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res, err := r.Add(list, atts[i])
			if err == nil {
				results[i], err = current.NewResultFromResult(res)
			}
			errs[i] = err
		}(i)
	}
	wg.Wait()
	seen := map[string]int{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("parallel ADD %d: %v", i, err)
		}
		for _, ip := range results[i].IPs {
			a := ip.Address.IP.String()
			if j, dup := seen[a]; dup {
				t.Errorf("pods %d and %d both got %s", j, i, a)
			}
			seen[a] = i
		}
	}
	for i, a := range atts {
		if err := r.Check(list, a); err != nil {
			t.Errorf("CHECK of pod %d: %v", i, err)
		}
		if err := r.Node.Ping(results[i].IPs[0].Address.IP.String()); err != nil {
			t.Errorf("node to pod %d: %v", i, err)
		}
	}
	if ifbs := strings.Count(r.Node.MustRun("ip", "-o", "link", "show", "type", "ifb"), "\n"); ifbs != n {
		t.Errorf("%d IFBs for %d pods with an ingress limit", ifbs, n)
	}
	nat := r.Node.MustRun("iptables-save", "-t", "nat")
	if got := strings.Count(nat, "-A CNI-HOSTPORT-DNAT "); got != n {
		t.Errorf("%d port-mapping entry rules for %d pods:\n%s", got, n, nat)
	}

	for i := range atts {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = r.Del(list, atts[i])
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("parallel DEL %d: %v", i, err)
		}
	}
	// The bridge and the shared chains stay (node infrastructure made by
	// the first ADD); nothing of any pod does: no line the DELs left names
	// a pod's address, container, veth, IFB, port-mapping chain or port.
	marks := []string{"veth", "kind=ifb", "CNI-DN-", "dport 20", "dports 20", "files: networks/cnibox-default/10."}
	for i, a := range atts {
		marks = append(marks, a.ContainerID, results[i].IPs[0].Address.IP.String()+"/", results[i].IPs[0].Address.IP.String()+" ")
	}
	for _, l := range strings.Split(before.Diff(snap.Take(t)), "\n") {
		for _, m := range marks {
			if strings.Contains(l, m) {
				t.Errorf("left after the parallel DELs: %s", l)
				break
			}
		}
	}
}
