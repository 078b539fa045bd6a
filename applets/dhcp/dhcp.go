// Package dhcp is the dhcp IPAM applet: addresses from a DHCP server on
// the pod's network. A lease must be renewed for as long as the pod
// lives, so the work is done by a long-running daemon ("dhcp daemon", the
// same binary) that the plugin calls over a unix socket. Both halves
// speak the reference's protocol, so either interoperates with the
// reference's other half.
package dhcp

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
)

// Applet is dhcp's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:    "dhcp",
	Kind:    "ipam",
	Summary: "IPv4 addresses from a DHCP server (through 'dhcp daemon')",
	Main:    Main,
	Add:     Add,
	Del:     Del,
	Check:   Check,
	GC:      GC,
	Status:  Status,
}

// dialTimeout bounds connecting to the daemon and the CONNECT handshake.
const dialTimeout = 5 * time.Second

// Add asks the daemon for a lease for this attachment and returns it.
func Add(req *cni.Request) (types.Result, error) {
	conf, err := parseConfig(req.Config)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(req.Netns); errors.Is(err, os.ErrNotExist) {
		return nil, cni.Errorf(cni.ErrUnknownContainer, "dhcp: netns %q does not exist", req.Netns)
	}
	res := &current.Result{}
	if err := call(req, conf, "DHCP.Allocate", res); err != nil {
		return nil, err
	}
	res.CNIVersion = current.ImplementedSpecVersion
	return res, nil
}

// Del releases the attachment's lease. With no lease, or no daemon to
// hold one, there is nothing to release and Del succeeds.
func Del(req *cni.Request) error {
	conf, err := parseConfig(req.Config)
	if err != nil {
		return err
	}
	err = call(req, conf, "DHCP.Release", &struct{}{})
	var down unreachable
	if errors.As(err, &down) {
		// DEL must succeed, and the lease must not be lost: the daemon
		// releases it when it is back (pending.go).
		path, rerr := recordRelease(socketPath(conf), callArgsOf(req), conf.Name)
		if rerr != nil {
			req.Log.Warnf("%v; recording the release for the daemon failed too (%v): the server will let the lease expire", err, rerr)
			return nil
		}
		req.Log.Warnf("%v; the release is recorded in %s and carried out when the daemon starts", err, path)
		return nil
	}
	return err
}

// Check asks the daemon whether the attachment still holds its lease and
// whether it is the address of prevResult. Unlike the reference's CHECK
// it never gets a new lease; against a reference daemon, which has no
// way to ask that, it checks nothing.
func Check(req *cni.Request) error {
	conf, err := parseConfig(req.Config)
	if err != nil {
		return err
	}
	res := &current.Result{}
	err = call(req, conf, "DHCP.Check", res)
	if unknownMethod(err) {
		req.Log.Warnf("the daemon at %s cannot check a lease without taking a new one; not checked", socketPath(conf))
		return nil
	}
	if err != nil {
		return err
	}
	prev, err := cni.PrevResult(&conf.NetConf)
	if err != nil || prev == nil {
		return err
	}
	for _, ip := range prev.IPs {
		if ip.Address.IP.To4() == nil {
			continue
		}
		if len(res.IPs) == 0 || !ip.Address.IP.Equal(res.IPs[0].Address.IP) {
			return fmt.Errorf("dhcp: prevResult has %s but the lease is for %s", ip.Address.IP, leaseIP(res))
		}
	}
	return nil
}

func leaseIP(res *current.Result) string {
	if len(res.IPs) == 0 {
		return "no address"
	}
	return res.IPs[0].Address.IP.String()
}

// GC has the daemon release the network's leases whose attachment is not
// among the valid ones.
func GC(req *cni.Request) error {
	conf, err := parseConfig(req.Config)
	if err != nil {
		return err
	}
	err = call(req, conf, "DHCP.GC", &struct{}{})
	if unknownMethod(err) {
		req.Log.Warnf("the daemon at %s does not collect garbage; nothing collected", socketPath(conf))
		return nil
	}
	return err
}

// Status fails with 50 when the daemon does not answer: without it no ADD
// can succeed.
func Status(req *cni.Request) error {
	conf, err := parseConfig(req.Config)
	if err != nil {
		return err
	}
	err = call(req, conf, "DHCP.Status", &struct{}{})
	if err == nil || unknownMethod(err) {
		return nil // a reference daemon: it answered, so it serves
	}
	return cni.NotAvailable("%v", err)
}

// unreachable is a socket nobody listens on (code 11: start the daemon
// and try again).
type unreachable struct{ e *types.Error }

func (u unreachable) Error() string { return u.e.Error() }
func (u unreachable) Unwrap() error { return u.e }

func socketPath(conf *Config) string {
	if conf.IPAM.DaemonSocketPath != "" {
		return conf.IPAM.DaemonSocketPath
	}
	return DefaultSocketPath
}

// call makes one call to the daemon with the invocation as argument.
func call(req *cni.Request, conf *Config, method string, reply any) error {
	path := socketPath(conf)
	c, err := dialRPC(path, dialTimeout)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return unreachable{cni.TryAgain("dhcp: cannot reach the dhcp daemon at %s (start it with 'dhcp daemon' or the cni-dhcp.socket unit): %v",
				path, err)}
		}
		return cni.TryAgain("dhcp: cannot talk to the dhcp daemon at %s: %v", path, err)
	}
	defer c.Close()
	if err := c.Call(method, callArgsOf(req), reply); err != nil {
		var re rpcError
		if errors.As(err, &re) {
			return err
		}
		return fmt.Errorf("dhcp: %s on the daemon at %s: %w", method, path, err)
	}
	return nil
}

// callArgsOf is the invocation as the daemon's calls take it.
func callArgsOf(req *cni.Request) *callArgs {
	netns := req.Netns
	if netns != "" {
		// The daemon may run with another working directory.
		if abs, err := filepath.Abs(netns); err == nil {
			netns = abs
		}
	}
	return &callArgs{
		ContainerID: req.ContainerID, Netns: netns, IfName: req.IfName,
		Args: req.Args, Path: req.Path, StdinData: req.Config,
	}
}
