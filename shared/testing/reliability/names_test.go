package reliability

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// chain runs a plugin list by exec, as libcni does, but without libcni's
// result cache, whose file name ("<network>-<containerID>-<ifname>") a
// runtime may keep elsewhere: the plugins must take any legal name.
type chain struct {
	t    *testing.T
	r    *testnet.Runtime
	list *libcni.NetworkConfigList
}

func (c *chain) conf(i int, a *testnet.Attachment, prev json.RawMessage, extra map[string]any) []byte {
	p := c.list.Plugins[i]
	conf := map[string]any{}
	if err := json.Unmarshal(p.Bytes, &conf); err != nil {
		c.t.Fatal(err)
	}
	conf["name"], conf["cniVersion"] = c.list.Name, c.list.CNIVersion
	if prev != nil {
		conf["prevResult"] = prev
	}
	rc := map[string]any{}
	for capName, on := range p.Network.Capabilities {
		if v, ok := a.Caps[capName]; ok && on {
			rc[capName] = v
		}
	}
	if len(rc) > 0 {
		conf["runtimeConfig"] = rc
	}
	for k, v := range extra {
		conf[k] = v
	}
	b, _ := json.Marshal(conf)
	return b
}

func (c *chain) exec(i int, cmd string, a *testnet.Attachment, stdin []byte) ([]byte, error) {
	env := []string{"CNI_COMMAND=" + cmd, "CNI_PATH=" + c.r.Path,
		"DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + filepath.Join(c.t.TempDir(), "no-bus")}
	if a != nil {
		env = append(env, "CNI_CONTAINERID="+a.ContainerID, "CNI_IFNAME="+a.IfName)
		if a.Pod != nil {
			env = append(env, "CNI_NETNS="+a.Pod.Path)
		}
	}
	out, stderr, rc := c.r.Exec(c.list.Plugins[i].Network.Type, env, stdin)
	if rc != 0 {
		return nil, fmt.Errorf("%s %s: exit %d: %s %s", c.list.Plugins[i].Network.Type, cmd, rc, out, stderr)
	}
	return out, nil
}

// add runs ADD through the list and returns the final result.
func (c *chain) add(a *testnet.Attachment) (json.RawMessage, error) {
	var prev json.RawMessage
	for i := range c.list.Plugins {
		out, err := c.exec(i, "ADD", a, c.conf(i, a, prev, nil))
		if err != nil {
			return prev, err
		}
		prev = out
	}
	return prev, nil
}

func (c *chain) check(a *testnet.Attachment, res json.RawMessage) error {
	for i := range c.list.Plugins {
		if _, err := c.exec(i, "CHECK", a, c.conf(i, a, res, nil)); err != nil {
			return err
		}
	}
	return nil
}

func (c *chain) del(a *testnet.Attachment, res json.RawMessage) error {
	for i := len(c.list.Plugins) - 1; i >= 0; i-- {
		if _, err := c.exec(i, "DEL", a, c.conf(i, a, res, nil)); err != nil {
			return err
		}
	}
	return nil
}

func (c *chain) gc(valid ...*testnet.Attachment) error {
	var atts []map[string]string
	for _, a := range valid {
		atts = append(atts, map[string]string{"containerID": a.ContainerID, "ifname": a.IfName})
	}
	for i := range c.list.Plugins {
		stdin := c.conf(i, &testnet.Attachment{}, nil, map[string]any{"cni.dev/valid-attachments": atts, "cniVersion": "1.1.0"})
		if _, err := c.exec(i, "GC", nil, stdin); err != nil {
			return err
		}
	}
	return nil
}

// TestLongNames: the default chain (bridge, host-local, loopback,
// portmap, firewall, tuning, bandwidth, with a port mapping, a bandwidth
// limit and a MAC) takes network names and container IDs of any legal
// length: a 200-byte network name with a 64-hex container ID, and a
// 1000-byte container ID. ADD, CHECK, DEL and GC succeed, and nothing is
// left. Before, ADD failed with 999 ("numerical result out of range": the
// host veth's alias is at most 255 bytes; then firewall's record, a file
// named after the container ID, "file name too long").
func TestLongNames(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, net, id string }{
		{"network-200", strings.Repeat("n", 200), strings.Repeat("a", 64)},
		{"id-1000", "long-id", strings.Repeat("b", 1000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testnet.NewRuntime(t)
			conf := strings.Replace(defaultConf(t), `"name": "cnibox-default"`, `"name": "`+tc.net+`"`, 1)
			conf = strings.Replace(conf, `"cniVersion": "1.0.0"`, `"cniVersion": "1.1.0"`, 1)
			c := &chain{t: t, r: r, list: r.Conflist(conf)}
			live := r.Attach(r.Pod(t), "eth0")
			caps(live, 1)
			if _, err := c.add(live); err != nil {
				t.Fatalf("ADD of a live pod: %v", err)
			}
			snap := r.Snapshotter()
			before := snap.Take(t)
			a := r.Attach(r.Pod(t), "eth0")
			a.ContainerID = tc.id
			caps(a, 2)
			res, err := c.add(a)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if err := c.check(a, res); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			// GC with the long one valid keeps it.
			if err := c.gc(a, live); err != nil {
				t.Fatalf("GC: %v", err)
			}
			if err := c.check(a, res); err != nil {
				t.Errorf("CHECK after GC: %v", err)
			}
			if err := c.del(a, res); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			// A lost DEL of a long one: GC cleans it.
			b := r.Attach(r.Pod(t), "eth0")
			b.ContainerID = tc.id[:len(tc.id)-1] + "z"
			caps(b, 3)
			if _, err := c.add(b); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if err := c.gc(live); err != nil {
				t.Fatalf("GC: %v", err)
			}
			snap.AssertSame(t, before, "after DEL and GC of long names")
		})
	}
}
