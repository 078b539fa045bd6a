package testnet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// Runtime plays a container runtime on a throwaway node: a node netns in
// which every plugin runs, a config dir, a libcni result cache and a state
// directory, all removed when the test ends.
//
// Plugins run in a private mount namespace where /var/lib is a fresh tmpfs,
// /var/lib/cni is the test's own StateDir and /run/cni its own RunDir: even
// a config that forgets dataDir cannot write to the machine's /var/lib/cni
// or /run/cni (tuning's default backups), and two tests with the same
// network name cannot GC each other's state there. /run/cnibox stays the
// machine's: its lock files serialize writers per netns inode, and each
// test's netns is its own anyway.
type Runtime struct {
	t        testing.TB
	Node     *NS
	BinDir   string // CNI_PATH: cnibox and its applet links
	ConfDir  string // NETCONFPATH
	CacheDir string // libcni's result cache
	StateDir string // mounted at /var/lib/cni for every plugin
	// RunDir is mounted at /run/cni for every plugin. A daemon a test
	// starts outside (dhcp daemon -socketpath RunDir/dhcp.sock) is where
	// plugins look by default (/run/cni/dhcp.sock).
	RunDir string
	// Path is the CNI_PATH given to plugins; BinDir unless a test changes it
	// (to put a reference plugin first, for one).
	Path string
	CNI  *libcni.CNIConfig
	// ExecHook, when set, is called with every plugin process libcni
	// starts, right after it started (crash-injection tests kill it).
	ExecHook func(plugin string, p *os.Process)
	// Env is added to the environment of every plugin libcni starts (a
	// private DBUS_SYSTEM_BUS_ADDRESS, for one) without changing this
	// process's, which tests running in parallel share.
	Env []string
}

// NewRuntime makes a node and a runtime around it.
func NewRuntime(t testing.TB) *Runtime {
	t.Helper()
	RequireRoot(t)
	dir := t.TempDir()
	r := &Runtime{
		t:        t,
		Node:     NewNS(t, "node"),
		BinDir:   BinDir(t),
		ConfDir:  filepath.Join(dir, "net.d"),
		CacheDir: filepath.Join(dir, "cache"),
		StateDir: filepath.Join(dir, "state"),
		RunDir:   filepath.Join(dir, "run"),
	}
	for _, d := range []string{r.ConfDir, r.CacheDir, r.StateDir, r.RunDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The mount point of RunDir. On a machine without it, this leaves an
	// empty /run/cni (a tmpfs: gone at the next boot).
	if err := os.MkdirAll("/run/cni", 0o755); err != nil {
		t.Fatal(err)
	}
	r.SetPath(r.BinDir)
	return r
}

// SetPath changes CNI_PATH (a ':'-separated list).
func (r *Runtime) SetPath(path string) {
	r.Path = path
	r.CNI = libcni.NewCNIConfigWithCacheDir(filepath.SplitList(path), r.CacheDir, &isolatedExec{r: r})
}

// Pod makes a pod netns.
func (r *Runtime) Pod(t testing.TB) *NS { return NewNS(t, "pod") }

// Outside makes a netns beyond the node, as the internet is beyond a
// real one: a veth "uplink" in the node with nodeAddr, its peer "wan" in
// the new netns with outsideAddr (both CIDR). The outside has no route
// back to pods: only masqueraded traffic gets an answer.
func (r *Runtime) Outside(t testing.TB, nodeAddr, outsideAddr string) *NS {
	t.Helper()
	out := NewNS(t, "outside")
	r.Node.MustRun("ip", "link", "add", "uplink", "type", "veth", "peer", "name", "wan", "netns", out.Name)
	r.Node.MustRun("ip", "addr", "add", nodeAddr, "dev", "uplink")
	r.Node.MustRun("ip", "link", "set", "uplink", "up")
	out.MustRun("ip", "addr", "add", outsideAddr, "dev", "wan")
	out.MustRun("ip", "link", "set", "wan", "up")
	return out
}

// Conflist writes a network configuration list into ConfDir (named after
// the network) and returns it parsed by libcni.
func (r *Runtime) Conflist(conf string) *libcni.NetworkConfigList {
	r.t.Helper()
	list, err := libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		r.t.Fatalf("parse conflist: %v\n%s", err, conf)
	}
	file := filepath.Join(r.ConfDir, list.Name+".conflist")
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		r.t.Fatal(err)
	}
	return list
}

// Attachment is what a runtime knows of one pod's interface.
type Attachment struct {
	ContainerID string
	IfName      string
	Pod         *NS
	Args        [][2]string
	Caps        map[string]any
}

// Attach describes an attachment of pod as ifName with a fresh container ID.
func (r *Runtime) Attach(pod *NS, ifName string) *Attachment {
	return &Attachment{ContainerID: "cnibox-" + randHex(8), IfName: ifName, Pod: pod}
}

func (a *Attachment) rt() *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: a.ContainerID, IfName: a.IfName, Args: a.Args, CapabilityArgs: a.Caps}
	if a.Pod != nil {
		rt.NetNS = a.Pod.Path
	}
	return rt
}

func (r *Runtime) inNode(f func() error) error {
	return r.Node.Do(f)
}

// Add runs ADD of the whole list through libcni, from the node.
func (r *Runtime) Add(list *libcni.NetworkConfigList, a *Attachment) (types.Result, error) {
	var res types.Result
	err := r.inNode(func() (err error) {
		res, err = r.CNI.AddNetworkList(context.Background(), list, a.rt())
		return err
	})
	return res, err
}

// Check runs CHECK of the list through libcni.
func (r *Runtime) Check(list *libcni.NetworkConfigList, a *Attachment) error {
	return r.inNode(func() error { return r.CNI.CheckNetworkList(context.Background(), list, a.rt()) })
}

// Del runs DEL of the list through libcni (with the cached result as prevResult).
func (r *Runtime) Del(list *libcni.NetworkConfigList, a *Attachment) error {
	return r.inNode(func() error { return r.CNI.DelNetworkList(context.Background(), list, a.rt()) })
}

// GC runs GC of the list through libcni with the given attachments valid.
func (r *Runtime) GC(list *libcni.NetworkConfigList, valid ...*Attachment) error {
	args := &libcni.GCArgs{}
	for _, a := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	return r.inNode(func() error { return r.CNI.GCNetworkList(context.Background(), list, args) })
}

// Status runs STATUS of the list through libcni.
func (r *Runtime) Status(list *libcni.NetworkConfigList) error {
	return r.inNode(func() error { return r.CNI.GetStatusNetworkList(context.Background(), list) })
}

// Validate runs VERSION of every plugin of the list, as podman does when it
// loads networks.
func (r *Runtime) Validate(list *libcni.NetworkConfigList) error {
	return r.inNode(func() error {
		_, err := r.CNI.ValidateNetworkList(context.Background(), list)
		return err
	})
}

// Cnitool runs the reference cnitool (v1.3.0) from the node, with this
// runtime's NETCONFPATH and CNI_PATH, in the same private mount namespace
// as plugins get. env adds variables (CNI_ARGS=..., CAP_ARGS=...,
// CNI_IFNAME=...). netns may be nil for gc and status. It returns stdout;
// on failure the error carries stderr.
func (r *Runtime) Cnitool(verb, network string, pod *NS, env ...string) (string, error) {
	args := []string{Cnitool(r.t), verb, network}
	if pod != nil {
		args = append(args, pod.Path)
	} else {
		args = append(args, "")
	}
	cmd := exec.Command(args[0], args[1:]...)
	r.isolate(cmd)
	cmd.Env = append(os.Environ(), "NETCONFPATH="+r.ConfDir, "CNI_PATH="+r.Path)
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := r.inNode(cmd.Run)
	if err != nil {
		return stdout.String(), fmt.Errorf("cnitool %s %s: %w: %s%s", verb, network, err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// CnitoolContainerID is the container ID cnitool derives from a netns path.
func CnitoolContainerID(netns string) string {
	return cnitoolID(netns)
}

// Exec runs one applet directly, as a runtime's exec would, from the node:
// env holds the CNI_* variables ("CNI_COMMAND=ADD", ...), stdin the config.
// It returns stdout, stderr and the exit code.
func (r *Runtime) Exec(applet string, env []string, stdin []byte) (stdout, stderr []byte, code int) {
	r.t.Helper()
	cmd := exec.Command(filepath.Join(r.BinDir, applet))
	r.isolate(cmd)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := r.inNode(cmd.Run)
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		code = exitErr.ExitCode()
	default:
		r.t.Fatalf("exec %s: %v", applet, err)
	}
	return out.Bytes(), errb.Bytes(), code
}

// ParseError decodes the CNI error JSON an applet wrote to stdout.
func ParseError(t testing.TB, stdout []byte) *types.Error {
	t.Helper()
	e := &types.Error{}
	if err := json.Unmarshal(stdout, e); err != nil {
		t.Fatalf("stdout is not a CNI error: %v: %q", err, stdout)
	}
	return e
}

// isolate makes cmd run in a private mount namespace in which /var/lib is
// an empty tmpfs, /var/lib/cni is StateDir and /run/cni is RunDir, so
// plugins and runtimes write their default state into the test's
// directories (cnitool's result cache included).
func (r *Runtime) isolate(cmd *exec.Cmd) {
	script := `mount -t tmpfs cnibox-test /var/lib && mkdir /var/lib/cni && mount --bind "$0" /var/lib/cni && mount --bind "$1" /run/cni && shift && exec "$@"`
	argv := append([]string{"unshare", "--mount", "--propagation", "private", "sh", "-c", script, r.StateDir, r.RunDir, cmd.Path}, cmd.Args[1:]...)
	path, err := exec.LookPath("unshare")
	if err != nil {
		path = "/usr/bin/unshare"
	}
	cmd.Path = path
	cmd.Args = argv
}

// isolatedExec is libcni's plugin exec, run through isolate.
type isolatedExec struct {
	r *Runtime
}

func (e *isolatedExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, pluginPath)
	e.r.isolate(cmd)
	cmd.Env = environ
	if e.r != nil {
		cmd.Env = append(cmd.Env, e.r.Env...)
	}
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Start()
	if err == nil {
		if e.r.ExecHook != nil {
			e.r.ExecHook(pluginPath, cmd.Process)
		}
		err = cmd.Wait()
	}
	if err != nil {
		return nil, pluginErr(err, stdout.Bytes(), stderr.Bytes())
	}
	if stderr.Len() > 0 && os.Getenv("CNIBOX_TEST_STDERR") != "" {
		fmt.Fprintf(os.Stderr, "%s", stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

func (e *isolatedExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (e *isolatedExec) Decode(jsonBytes []byte) (version.PluginInfo, error) {
	return (&version.PluginDecoder{}).Decode(jsonBytes)
}

// pluginErr mirrors libcni's RawExec: the error JSON on stdout when there
// is one, otherwise stderr.
func pluginErr(err error, stdout, stderr []byte) error {
	e := &types.Error{}
	switch {
	case len(stdout) > 0:
		if perr := json.Unmarshal(stdout, e); perr != nil {
			e.Msg = fmt.Sprintf("netplugin failed but error parsing its diagnostic message %q: %v", stdout, perr)
		} else if e.Msg == "" {
			// Not an error object: the plugin wrote its result and then
			// died (a crash test's kill landing after the write). Say how
			// it exited instead of an empty message, as libcni would not.
			e.Msg = fmt.Sprintf("netplugin failed after writing %d bytes of output: %v", len(stdout), err)
		}
	case len(stderr) > 0:
		e.Msg = fmt.Sprintf("netplugin failed: %q", strings.TrimSpace(string(stderr)))
	default:
		e.Msg = fmt.Sprintf("netplugin failed with no error message: %v", err)
	}
	return e
}
