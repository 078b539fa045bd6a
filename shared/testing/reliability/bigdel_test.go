package reliability

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestBigDelConfig: a DEL is accepted for every attachment an ADD was.
// An ADD config just under the 16 MiB limit is accepted; its DEL (the
// same config with the chain's result as prevResult, together over 16
// MiB) must be too, and it releases the reservation. Before, that DEL
// was refused (code 7, "larger than 16777216 bytes") and the address
// stayed reserved. A DEL over the teardown limit (64 MiB) is still
// refused.
func TestBigDelConfig(t *testing.T) {
	t.Parallel()
	r := testnet.NewRuntime(t)
	pod := r.Pod(t)
	conf := map[string]any{"cniVersion": "1.0.0", "name": "bigdel", "type": "host-local",
		"ipam": map[string]any{"type": "host-local", "ranges": []any{[]any{map[string]any{"subnet": "10.94.0.0/24"}}}},
		"pad":  strings.Repeat("a", 15<<20)}
	env := func(cmd string) []string {
		return []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=big", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path, "CNI_PATH=" + r.Path}
	}
	stdin, _ := json.Marshal(conf)
	out, errb, code := r.Exec("host-local", env("ADD"), stdin)
	if code != 0 {
		t.Fatalf("ADD of a %d-byte config: %s %s", len(stdin), out, errb)
	}
	var prev map[string]any
	if err := json.Unmarshal(out, &prev); err != nil {
		t.Fatal(err)
	}
	// The chain's result, as a runtime passes it on DEL: here with a
	// large annotation of another plugin of the chain.
	prev["dns"] = map[string]any{"search": []string{strings.Repeat("b", 2<<20)}}
	conf["prevResult"] = prev
	stdin, _ = json.Marshal(conf)
	if len(stdin) <= 16<<20 {
		t.Fatalf("DEL config of %d bytes is not over 16 MiB", len(stdin))
	}
	if out, errb, code := r.Exec("host-local", env("DEL"), stdin); code != 0 {
		t.Fatalf("DEL of a %d-byte config: %s %s", len(stdin), out, errb)
	}
	if res := r.Reservations("bigdel"); len(res) != 0 {
		t.Errorf("DEL left reservations: %v", res)
	}
	conf["pad"] = strings.Repeat("a", 65<<20)
	stdin, _ = json.Marshal(conf)
	out, _, code = r.Exec("host-local", env("DEL"), stdin)
	if code == 0 || testnet.ParseError(t, out).Code != 7 {
		t.Errorf("DEL of a %d-byte config: exit %d %s, want code 7", len(stdin), code, out)
	}
}

// TestStateDirsGo: the state directories cnibox makes go with the last
// attachment that used them: tuning's /run/cni/tuning, host-local's
// .cnibox index, firewall's and portmap's record directories. The
// reference's own files (host-local's network directory with its lock
// and last_reserved_ip) stay, as the reference leaves them. Before,
// /run/cni/tuning and .cnibox stayed, empty.
func TestStateDirsGo(t *testing.T) {
	t.Parallel()
	r := testnet.NewRuntime(t)
	list := defaultList(t, r)
	var atts []*testnet.Attachment
	for i := 0; i < 2; i++ {
		a := r.Attach(r.Pod(t), "eth0")
		caps(a, 20+i)
		if _, err := r.Add(list, a); err != nil {
			t.Fatal(err)
		}
		atts = append(atts, a)
	}
	gone := []string{
		filepath.Join(r.RunDir, "tuning"),
		filepath.Join(r.StateDir, "networks", ".cnibox"),
		filepath.Join(r.StateDir, "cnibox-firewall"),
		filepath.Join(r.StateDir, "cnibox-portmap"),
	}
	for i, a := range atts {
		if err := r.Del(list, a); err != nil {
			t.Fatal(err)
		}
		for _, d := range gone {
			_, err := os.Stat(d)
			if last := i == len(atts)-1; last && err == nil {
				t.Errorf("%s left after the last DEL", d)
			} else if !last && err != nil {
				t.Errorf("%s gone while an attachment is left: %v", d, err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(r.StateDir, "networks", list.Name, "lock")); err != nil {
		t.Errorf("host-local's lock went: %v", err)
	}
}
