// Package iface is what the link-creating applets (macvlan, ipvlan, vlan,
// host-device) share: opening the pod's netns, finding the master link,
// creating a link directly in the pod under a temporary name, applying an
// IPAM result, building the applet's result, checking a link against a
// previous result (CHECK) and deleting it again (DEL).
//
// The usual ADD, with the master in the node's netns:
//
//	netns, err := iface.OpenNetns(req.Netns)       // code 3 when it is gone
//	defer netns.Close()
//	master, err := iface.Master(nil, conf.Master)   // "" = default route's link
//	err = iface.CheckMTU("mtu", conf.MTU, master)
//	link, err := iface.Create(netns, &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{ParentIndex: master.Attrs().Index}}, req.IfName, false)
//	res := iface.NewResult(ipamResult, conf.DNS, link, req.Netns)
//	err = netns.Do(func(ns.NetNS) error { return iface.Configure(req.IfName, res, iface.NotifyAll) })
//
// CHECK: idx, ifc, err := iface.FindInterface(prev, ifName, netnsPath), then
// inside the netns iface.CheckLink(ifName, iface.Want{Type: ..., MAC: ifc.Mac, ...})
// and iface.CheckIPs(ifName, idx, prev).
// DEL: iface.DeleteLink(req.Netns, ifName) tolerates a missing netns or link.
//
// Functions documented as running "inside the netns" use the calling
// thread's namespace; call them from ns.NetNS.Do.
package iface
