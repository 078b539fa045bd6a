package main

// The floor side: what no implementation of a scenario can avoid. libcni
// execs one process per plugin of the list, and the kernel must make (ADD)
// or remove (DEL) the pod's links, addresses, routes, qdiscs, rules and
// reservation. The floor side runs the scenario's list through libcni
// with every plugin a static no-op binary (it prints the smallest valid
// result), then does the scenario's kernel work itself, in the bench's
// own process over netlink, in as few requests as one process can: the
// veth with one queue per direction, and on DEL the veth and the IFB in
// one link-deletion request (one RCU grace period). So "cnibox/floor" is
// how far cnibox sits above what is physically needed with the runtime's
// exec-per-plugin protocol, measured in the same run, pod by pod in turn
// with the other sides.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// floorOps is the kernel work of one pod of a scenario.
type floorOps struct {
	link      string // "bridge", "ptp", "macvlan" or "" (no interface: IPAM alone)
	bandwidth bool   // IFB, ingress qdisc, redirect filter, two TBFs
	sysctl    bool   // one sysctl written in the pod (tuning)
	rules     bool   // netfilter rules: one nftables transaction per verb
}

// noopSource is the floor's plugin: it prints the smallest result its
// caller accepts and does nothing else. No encoding/json: its init is
// part of what it would measure.
const noopSource = `package main

import (
	"io"
	"os"
	"strings"
)

func main() {
	switch os.Getenv("CNI_COMMAND") {
	case "VERSION":
		os.Stdout.WriteString("{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[\"0.1.0\",\"0.2.0\",\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]}")
	case "ADD":
		in, _ := io.ReadAll(os.Stdin)
		v := "1.0.0"
		if _, rest, ok := strings.Cut(string(in), "\"cniVersion\":\""); ok {
			v, _, _ = strings.Cut(rest, "\"")
		}
		os.Stdout.WriteString("{\"cniVersion\":\"" + v + "\"}")
	}
}
`

// newFloorSide builds the no-op plugin (static, stripped, as cnibox is)
// and links every plugin name to it.
func newFloorSide(tmp string) (*side, error) {
	dir := filepath.Join(tmp, "floor")
	src := filepath.Join(tmp, "noop-src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(noopSource), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module noop\n\ngo 1.21\n"), 0o644); err != nil {
		return nil, err
	}
	bin := filepath.Join(dir, "noop")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build the no-op plugin: %v: %s", err, out)
	}
	for _, name := range strings.Fields("bridge ptp macvlan ipvlan host-local static portmap firewall tuning bandwidth loopback cnibox") {
		if err := os.Symlink("noop", filepath.Join(dir, name)); err != nil {
			return nil, err
		}
	}
	return &side{name: "floor", dir: dir}, nil
}

const floorTable = "cnibox_floor"

// floorSetup makes what a scenario's pods share and the other sides'
// first ADD creates (the bridge and its gateway address, the rule
// table), so that every timed pod is a steady-state one. It runs in the
// node netns.
func floorSetup(e *env) error {
	return e.inNode(func() error {
		if e.sc.floor.link == "bridge" {
			br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "cbench0"}}
			if err := netlink.LinkAdd(br); err != nil {
				return fmt.Errorf("bridge: %w", err)
			}
			if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 77, 0, 1), Mask: net.CIDRMask(16, 32)}}); err != nil {
				return err
			}
			if err := netlink.LinkSetUp(br); err != nil {
				return err
			}
		}
		if e.sc.floor.rules {
			c, err := nftables.New()
			if err != nil {
				return err
			}
			c.AddTable(&nftables.Table{Name: floorTable, Family: nftables.TableFamilyIPv4})
			if err := c.Flush(); err != nil {
				return fmt.Errorf("nft table: %w", err)
			}
		}
		return os.MkdirAll(filepath.Join(e.state, "floor-ipam"), 0o755)
	})
}

func podIP(i int) net.IP { return net.IPv4(10, 77, byte(1+i/250), byte(2+i%250)) }

// floorKernel does the kernel work of verb for pod i. It runs in the node
// netns (the caller's thread is locked there).
func (e *env) floorKernel(verb string, i int, podPath string) error {
	f := e.sc.floor
	podNS, err := netns.GetFromPath(podPath)
	if err != nil {
		return err
	}
	defer podNS.Close()
	pod, err := netlink.NewHandleAt(podNS)
	if err != nil {
		return err
	}
	defer pod.Close()
	host := fmt.Sprintf("flv%d", i)
	ifb := fmt.Sprintf("flb%d", i)
	group := uint32(1000 + i)
	reservation := filepath.Join(e.state, "floor-ipam", podIP(i).String())
	// What does not depend on the links (the rules, the reservation) runs
	// beside them, as a one-process implementation would: cnibox's bridge
	// does its masquerade rules while the veth is made or deleted.
	var side sync.WaitGroup
	var rulesErr, fileErr error
	if verb != "CHECK" {
		side.Add(1)
		go func() {
			defer side.Done()
			if f.rules {
				rulesErr = e.floorRules(verb, i)
			}
			if verb == "ADD" {
				fileErr = os.WriteFile(reservation, []byte(fmt.Sprintf("bench-%d\r\neth0", i)), 0o600)
			} else {
				fileErr = os.Remove(reservation)
			}
		}()
	}
	err = e.floorLinks(verb, i, podPath, podNS, pod, host, ifb, group)
	side.Wait()
	return errors.Join(err, rulesErr, fileErr)
}

// floorLinks is the link, address and route work of verb for pod i.
func (e *env) floorLinks(verb string, i int, podPath string, podNS netns.NsHandle, pod *netlink.Handle, host, ifb string, group uint32) error {
	f := e.sc.floor
	reservation := filepath.Join(e.state, "floor-ipam", podIP(i).String())
	switch verb {
	case "CHECK":
		if f.link != "" {
			_, err := pod.LinkByName("eth0")
			return err
		}
		_, err := os.Stat(reservation)
		return err
	case "DEL":
		switch f.link {
		case "bridge", "ptp":
			// Host veth (its peer goes with it) and IFB: one request.
			return delGroup(group)
		case "macvlan":
			l, err := pod.LinkByName("eth0")
			if err != nil {
				return err
			}
			return pod.LinkDel(l)
		}
		return nil
	}

	// ADD
	gw := net.IPv4(10, 77, 0, 1)
	switch f.link {
	case "":
		return nil
	case "bridge", "ptp":
		v := &netlink.Veth{
			LinkAttrs:       netlink.LinkAttrs{Name: host, NumTxQueues: 1, NumRxQueues: 1, Group: group},
			PeerName:        "eth0",
			PeerNumTxQueues: 1, PeerNumRxQueues: 1,
			PeerNamespace: netlink.NsFd(int(podNS)),
		}
		if err := netlink.LinkAdd(v); err != nil {
			return fmt.Errorf("veth: %w", err)
		}
		hl, err := netlink.LinkByName(host)
		if err != nil {
			return err
		}
		if f.link == "bridge" {
			br, err := netlink.LinkByName("cbench0")
			if err != nil {
				return err
			}
			if err := netlink.LinkSetMaster(hl, br); err != nil {
				return err
			}
		} else {
			if err := netlink.AddrAdd(hl, &netlink.Addr{IPNet: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}}); err != nil {
				return err
			}
		}
		if err := netlink.LinkSetUp(hl); err != nil {
			return err
		}
		if f.link == "ptp" {
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: hl.Attrs().Index, Dst: &net.IPNet{IP: podIP(i), Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}); err != nil {
				return err
			}
		}
		if f.bandwidth {
			if err := floorShaping(hl, ifb, group); err != nil {
				return err
			}
		}
	case "macvlan":
		master, err := netlink.LinkByName("bmaster0")
		if err != nil {
			return err
		}
		m := &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: "eth0", ParentIndex: master.Attrs().Index, Namespace: netlink.NsFd(int(podNS))}, Mode: netlink.MACVLAN_MODE_BRIDGE}
		if err := netlink.LinkAdd(m); err != nil {
			return fmt.Errorf("macvlan: %w", err)
		}
	}
	l, err := pod.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := pod.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: podIP(i), Mask: net.CIDRMask(16, 32)}}); err != nil {
		return err
	}
	if err := pod.LinkSetUp(l); err != nil {
		return err
	}
	if err := pod.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw}); err != nil {
		return err
	}
	if f.sysctl {
		err := ns.WithNetNSPath(podPath, func(ns.NetNS) error {
			return os.WriteFile("/proc/sys/net/ipv4/conf/eth0/rp_filter", []byte("0"), 0o644)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// floorRules is the netfilter work of verb for pod i, in the node netns
// (named by fd, so that it can run on any thread): ADD adds a chain and
// the three rules bridge ipMasq, portmap and firewall write for one pod,
// in one transaction; DEL deletes them in one.
func (e *env) floorRules(verb string, i int) error {
	node, err := netns.GetFromPath("/run/netns/" + e.node)
	if err != nil {
		return err
	}
	defer node.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(node)))
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: floorTable, Family: nftables.TableFamilyIPv4}
	if verb == "DEL" {
		ch := &nftables.Chain{Name: fmt.Sprintf("pod%d", i), Table: t}
		c.FlushChain(ch)
		c.DelChain(ch)
		if err := c.Flush(); err != nil {
			return fmt.Errorf("nft delete: %w", err)
		}
		return nil
	}
	ch := c.AddChain(&nftables.Chain{Name: fmt.Sprintf("pod%d", i), Table: t})
	for k := 0; k < 3; k++ {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: podIP(i).To4()},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictAccept},
		}})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nft add: %w", err)
	}
	return nil
}

// floorShaping is bandwidth's kernel work: an IFB with a TBF, the host
// veth's ingress redirected to it, and a TBF on the host veth.
func floorShaping(hl netlink.Link, name string, group uint32) error {
	ifb := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name, NumTxQueues: 1, NumRxQueues: 1, Group: group, TxQLen: 1000}}
	if err := netlink.LinkAdd(ifb); err != nil {
		return fmt.Errorf("ifb: %w", err)
	}
	il, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(il); err != nil {
		return err
	}
	tbf := func(l netlink.Link) error {
		return netlink.QdiscAdd(&netlink.Tbf{
			QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
			Rate:       10_000_000 / 8, Limit: 100_000, Buffer: 1_000_000,
		})
	}
	if err := tbf(il); err != nil {
		return fmt.Errorf("tbf on ifb: %w", err)
	}
	if err := netlink.QdiscAdd(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: hl.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}); err != nil {
		return fmt.Errorf("ingress: %w", err)
	}
	filter := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: hl.Attrs().Index, Parent: netlink.MakeHandle(0xffff, 0), Priority: 1, Protocol: unix.ETH_P_ALL},
		ClassId:     netlink.MakeHandle(1, 1),
		RedirIndex:  il.Attrs().Index,
		Actions:     []netlink.Action{netlink.NewMirredAction(il.Attrs().Index)},
	}
	if err := netlink.FilterAdd(filter); err != nil {
		return fmt.Errorf("redirect filter: %w", err)
	}
	return tbf(hl)
}

// delGroup deletes every link of group in the current netns in one
// RTM_DELLINK: the kernel unregisters them together, one grace period.
func delGroup(group uint32) error {
	req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(group)))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}
