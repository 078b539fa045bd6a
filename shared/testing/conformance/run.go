package conformance

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// step is one verb of a run, played with the plugins of dir.
type step struct {
	verb string // ADD, CHECK, DEL, GC, STATUS
	fail bool   // the case expects it to fail ("ADD!")
	dir  string // CNI_PATH: the plugins this step runs
}

// plan is one run of a case.
type plan struct {
	name  string
	steps []step
	// oneExec plays the conflist as cnibox's one-exec chain (applets/chain):
	// one plugin of type "cnibox" holding the list.
	oneExec bool
}

// oneExecList wraps a conflist's plugins into one plugin of type "cnibox"
// that declares the union of their capabilities.
func oneExecList(conf []byte) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(conf, &top); err != nil {
		return nil, err
	}
	var plugins []struct {
		Capabilities map[string]bool `json:"capabilities"`
	}
	if err := json.Unmarshal(top["plugins"], &plugins); err != nil {
		return nil, err
	}
	caps := map[string]bool{}
	for _, p := range plugins {
		for k, on := range p.Capabilities {
			caps[k] = caps[k] || on
		}
	}
	outer, err := json.Marshal(map[string]any{"type": "cnibox", "capabilities": caps, "plugins": top["plugins"]})
	if err != nil {
		return nil, err
	}
	top["plugins"] = json.RawMessage("[" + string(outer) + "]")
	return json.Marshal(top)
}

// stepOutcome is what one verb did.
type stepOutcome struct {
	verb   string
	class  string // "ok", "err:<code>" for spec codes, "err:plugin" for codes >= 100, "err:runtime" for libcni's own
	msg    string
	result []byte // ADD's result JSON
}

// outcome is what one run did: each verb's outcome, the state before the
// first DEL ("added") and at the end ("deleted", only when a DEL ran).
type outcome struct {
	steps   []stepOutcome
	added   state
	deleted state
	hasDel  bool
}

// errClass is the class of an error that compares across
// implementations: the spec's codes (1-99) exactly, any plugin-specific
// code (100 and up, 999 "internal") as one class, and errors libcni
// raises itself (a plugin not found, a version check) as another.
func errClass(err error) (string, string) {
	if err == nil {
		return "ok", ""
	}
	var e *types.Error
	if errors.As(err, &e) {
		return codeClass(e.Code), e.Msg + " " + e.Details
	}
	return "err:runtime", err.Error()
}

func codeClass(code uint) string {
	switch {
	case code == 0:
		return "err:plugin" // a plugin that died without an error object
	case code < 100:
		return fmt.Sprintf("err:%d", code)
	default:
		return "err:plugin"
	}
}

// subst replaces the corpus's placeholders.
func subst(s, containerID, netns, ifName string) string {
	return strings.NewReplacer("{{containerID}}", containerID, "{{netns}}", netns, "{{ifName}}", ifName).Replace(s)
}

func randomID() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// play runs one plan of a case on a fresh node and pod and returns what
// it did. It fails t only when the harness cannot do its part.
func play(t *testing.T, c *Case, p plan, containerID string) *outcome {
	learnNewDevice(t)
	r := testnet.NewRuntime(t)
	e := prepare(t, c, r, p.steps[0].dir)
	base := map[string]sysctlBase{}
	for name, n := range map[string]*testnet.NS{"node": r.Node, "pod": e.pod} {
		s, err := sysctls(n, e.named)
		if err != nil {
			t.Fatal(err)
		}
		base[name] = s
	}
	ifName := c.ifName()
	sub := func(s string) string { return subst(s, containerID, e.pod.Path, ifName) }
	conf := []byte(sub(string(c.netconf())))
	var caps map[string]any
	if c.CapArgs != nil {
		b, _ := json.Marshal(c.CapArgs)
		if err := json.Unmarshal([]byte(sub(string(b))), &caps); err != nil {
			t.Fatal(err)
		}
	}
	var args [][2]string
	for _, a := range c.Args {
		args = append(args, [2]string{a[0], sub(a[1])})
	}
	att := &testnet.Attachment{ContainerID: containerID, IfName: ifName, Pod: e.pod, Args: args, Caps: caps}

	var list *libcni.NetworkConfigList
	if len(c.Conflist) > 0 {
		var err error
		if p.oneExec {
			if conf, err = oneExecList(conf); err != nil {
				t.Fatalf("case %s: wrap the list for one exec: %v", c.Name, err)
			}
		}
		if list, err = libcni.ConfListFromBytes(conf); err != nil {
			t.Fatalf("case %s: libcni cannot parse the conflist: %v", c.Name, err)
		}
	}
	out := &outcome{}
	live := false     // an ADD succeeded and no DEL followed
	var cached []byte // the last successful ADD's result (libcni's cache)
	for _, s := range p.steps {
		if s.verb == "DEL" && !out.hasDel {
			out.added = takeState(t, e, base)
			out.hasDel = true
		}
		r.BinDir = s.dir
		r.SetPath(s.dir)
		so := stepOutcome{verb: s.verb}
		var err error
		if list != nil {
			switch s.verb {
			case "ADD":
				var res types.Result
				if res, err = r.Add(list, att); err == nil {
					so.result, _ = json.Marshal(res)
				}
			case "CHECK":
				err = r.Check(list, att)
			case "DEL":
				err = r.Del(list, att)
			case "GC":
				if live {
					err = r.GC(list, att)
				} else {
					err = r.GC(list)
				}
			case "STATUS":
				err = r.Status(list)
			}
		} else {
			so.result, err = execConfig(t, r, s.verb, conf, att, caps, cached, live)
			if s.verb != "ADD" {
				so.result = nil
			}
		}
		so.class, so.msg = errClass(err)
		switch {
		case s.verb == "ADD" && err == nil:
			live, cached = true, so.result
		case s.verb == "DEL":
			live = false
		}
		out.steps = append(out.steps, so)
	}
	if out.hasDel {
		out.deleted = takeState(t, e, base)
	} else {
		out.added = takeState(t, e, base)
	}
	return out
}

// execConfig runs one verb of a single-plugin case by executing the
// plugin itself with the stdin and CNI_* environment libcni would give
// it: the capabilities the config enables as runtimeConfig, the cached
// ADD result as prevResult for CHECK and DEL (unless the config carries
// its own), the valid attachments for GC.
func execConfig(t *testing.T, r *testnet.Runtime, verb string, conf []byte, att *testnet.Attachment, caps map[string]any, cached []byte, live bool) ([]byte, error) {
	var m map[string]any
	if err := json.Unmarshal(conf, &m); err != nil {
		t.Fatalf("config: %v", err)
	}
	plugin, _ := m["type"].(string)
	if enabled, ok := m["capabilities"].(map[string]any); ok && len(caps) > 0 {
		rc, _ := m["runtimeConfig"].(map[string]any)
		if rc == nil {
			rc = map[string]any{}
		}
		for k, v := range caps {
			if on, _ := enabled[k].(bool); on {
				rc[k] = v
			}
		}
		if len(rc) > 0 {
			m["runtimeConfig"] = rc
		}
	}
	if _, has := m["prevResult"]; !has && cached != nil && (verb == "CHECK" || verb == "DEL") {
		var prev any
		json.Unmarshal(cached, &prev)
		m["prevResult"] = prev
	}
	if verb == "GC" {
		valid := []map[string]string{}
		if live {
			valid = append(valid, map[string]string{"containerID": att.ContainerID, "ifname": att.IfName})
		}
		m["cni.dev/valid-attachments"] = valid
	}
	stdin, _ := json.Marshal(m)
	var cniArgs []string
	for _, a := range att.Args {
		cniArgs = append(cniArgs, a[0]+"="+a[1])
	}
	env := []string{"CNI_COMMAND=" + verb, "CNI_PATH=" + r.Path}
	if verb != "GC" && verb != "STATUS" {
		env = append(env, "CNI_CONTAINERID="+att.ContainerID, "CNI_NETNS="+att.Pod.Path, "CNI_IFNAME="+att.IfName)
		if len(cniArgs) > 0 {
			env = append(env, "CNI_ARGS="+strings.Join(cniArgs, ";"))
		}
	}
	if _, err := os.Stat(filepath.Join(r.BinDir, plugin)); err != nil {
		return nil, fmt.Errorf("failed to find plugin %q in path %s", plugin, r.BinDir)
	}
	stdout, stderr, code := r.Exec(plugin, env, stdin)
	if code == 0 {
		return stdout, nil
	}
	e := &types.Error{}
	if jerr := json.Unmarshal(stdout, e); jerr != nil || (e.Code == 0 && e.Msg == "") {
		return nil, &types.Error{Code: 999, Msg: fmt.Sprintf("exit %d without an error object: %s%s", code, stdout, stderr)}
	}
	return nil, e
}
