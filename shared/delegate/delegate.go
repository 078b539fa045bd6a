// Package delegate runs a delegated plugin (the IPAM plugin of a main
// applet) exactly as the spec says: the plugin named by the config's type
// is looked up in CNI_PATH and gets the full configuration and the same
// environment. When the file found is this very binary, the applet runs
// in-process, which saves a fork/exec per pod; a user's own host-local
// earlier in CNI_PATH is still the one that runs.
package delegate

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/install"
)

// Add runs ADD of the delegated plugin and returns its result converted to
// the current result type.
func Add(req *cni.Request, plugin string) (*current.Result, error) {
	res, err := run(req, cni.CmdAdd, plugin)
	if err != nil {
		return nil, err
	}
	if res == nil {
		return nil, fmt.Errorf("%s: ADD returned no result", plugin)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("%s: convert result: %w", plugin, err)
	}
	return cur, nil
}

// Del runs DEL of the delegated plugin.
func Del(req *cni.Request, plugin string) error { return runNoResult(req, cni.CmdDel, plugin) }

// Check runs CHECK of the delegated plugin.
func Check(req *cni.Request, plugin string) error { return runNoResult(req, cni.CmdCheck, plugin) }

// GC runs GC of the delegated plugin.
func GC(req *cni.Request, plugin string) error { return runNoResult(req, cni.CmdGC, plugin) }

// Status runs STATUS of the delegated plugin.
func Status(req *cni.Request, plugin string) error { return runNoResult(req, cni.CmdStatus, plugin) }

func runNoResult(req *cni.Request, cmd, plugin string) error {
	_, err := run(req, cmd, plugin)
	return err
}

// Find returns the path of plugin in the request's CNI_PATH.
func Find(req *cni.Request, plugin string) (string, error) {
	if plugin == "" {
		return "", cni.ConfigError("ipam: missing field \"type\"")
	}
	if strings.ContainsAny(plugin, `/\`) || plugin == "." || plugin == ".." {
		return "", cni.ConfigError("ipam.type %q: a plugin name must not contain a path separator", plugin)
	}
	if req.Path == "" {
		return "", cni.Errorf(cni.ErrInvalidEnv, "CNI_PATH is empty: cannot find delegated plugin %q", plugin)
	}
	path, err := invoke.FindInPath(plugin, filepath.SplitList(req.Path))
	if err != nil {
		return "", cni.Errorf(cni.ErrInvalidConfig, "find plugin %q in CNI_PATH %q: %v", plugin, req.Path, err)
	}
	return path, nil
}

// Standalone finds plugin in CNI_PATH, as Find does, and reports whether
// it is one of cnibox's own allocators that work from the configuration
// alone (host-local, static), run in-process. Their ADD needs nothing
// from the pod's interface, so a main applet may run it while it makes
// the interface; dhcp, or any plugin that is not this binary, runs after
// the interface exists, as the spec's order has it.
func Standalone(req *cni.Request, plugin string) (bool, error) {
	path, err := Find(req, plugin)
	if err != nil {
		return false, err
	}
	return (plugin == "host-local" || plugin == "static") && SelfApplet(path) != nil, nil
}

func run(req *cni.Request, cmd, plugin string) (types.Result, error) {
	path, err := Find(req, plugin)
	if err != nil {
		return nil, err
	}
	if a := SelfApplet(path); a != nil {
		return inProcess(req, cmd, a)
	}
	args := &invoke.Args{
		Command:       cmd,
		ContainerID:   req.ContainerID,
		NetNS:         req.Netns,
		PluginArgsStr: req.Args,
		IfName:        req.IfName,
		Path:          req.Path,
	}
	ctx := context.Background()
	if cmd == cni.CmdAdd {
		return invoke.ExecPluginWithResult(ctx, path, req.Config, args, nil)
	}
	return nil, invoke.ExecPluginWithoutResult(ctx, path, req.Config, args, nil)
}

// SelfApplet returns the applet that exec'ing path would run, when path is
// this binary (through a symlink, a hard link or an applet entry).
func SelfApplet(path string) *cni.Applet {
	if cni.Lookup == nil || os.Getenv("CNIBOX_NO_INPROCESS") != "" {
		return nil
	}
	a := cni.Lookup(filepath.Base(path))
	if a == nil {
		return nil
	}
	target, err := os.Stat(path)
	if err != nil {
		return nil
	}
	if target.Size() < 1024 { // an applet entry: "#!/opt/cni/bin/cnibox"
		if interp := install.EntryInterpreter(path); interp != "" {
			if target, err = os.Stat(interp); err != nil {
				return nil
			}
		}
	}
	self, err := os.Stat("/proc/self/exe")
	if err != nil || !os.SameFile(target, self) {
		return nil
	}
	return a
}

// inProcess runs the applet as exec would, minus the process: the same
// request with the command replaced, and the same version rules.
func inProcess(req *cni.Request, cmd string, a *cni.Applet) (types.Result, error) {
	sub := *req
	sub.Command = cmd
	if err := cni.CheckVersion(a, &sub); err != nil {
		return nil, err
	}
	var f func(*cni.Request) error
	switch cmd {
	case cni.CmdAdd:
		if a.Add == nil {
			return nil, fmt.Errorf("%s does not implement ADD", a.Name)
		}
		res, err := a.Add(&sub)
		if err != nil || res == nil {
			return res, err
		}
		// At the request's version, as an exec'd plugin prints it: a
		// 0.1.0/0.2.0 result drops the routes of a family it has no
		// address of (kubenet's "::/0" for an IPv4-only pod), and the
		// caller must not install them when the reference does not.
		return res.GetAsVersion(sub.Version)
	case cni.CmdDel:
		f = a.Del
	case cni.CmdCheck:
		f = a.Check
	case cni.CmdGC:
		f = a.GC
	case cni.CmdStatus:
		f = a.Status
	}
	if f == nil {
		return nil, nil
	}
	return nil, f(&sub)
}

// IPAMGC is the GC of an applet whose only state outside pods is its IPAM
// plugin's: it decodes the config into conf, the applet's whole config
// type (so that GC refuses what ADD refuses), and passes GC on to the IPAM
// plugin the config names, if any.
func IPAMGC(req *cni.Request, conf any) error {
	if err := req.Decode(conf); err != nil {
		return err
	}
	var n cni.NetConf
	if err := req.Decode(&n); err != nil {
		return err
	}
	if n.IPAM.Type == "" {
		return nil
	}
	return GC(req, n.IPAM.Type)
}
