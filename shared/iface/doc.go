// Package iface is what the main applets share about the pod's interface:
// applying an IPAM result to it (Apply: addresses, link up, routes, IPv6
// DAD) and verifying it at CHECK (Verify, CheckIPs) for all of them
// (bridge, ptp, macvlan, ipvlan, vlan, host-device); and for the
// link-creating ones (macvlan, ipvlan, vlan, host-device) opening the pod's
// netns, finding the master link, creating a link directly in the pod under
// a temporary name, building the applet's result, checking a link against
// a previous result and deleting it again (DEL).
//
// The usual ADD, with the master in the node's netns:
//
//	netns, err := iface.OpenNetns(req.Netns)       // code 3 when it is gone
//	defer netns.Close()
//	master, err := iface.Master(nil, conf.Master)   // "" = default route's link
//	err = iface.CheckMTU("mtu", conf.MTU, master)
//	link, err := iface.Create(req, "macvlan", netns, &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{ParentIndex: master.Attrs().Index}}, false)
//	ipamRes, err := iface.AddIPAM(req, "macvlan", conf.IPAM.Type) // after the link: dhcp needs it
//	res := iface.NewResult(ipamRes, conf.DNS, link, req.Netns)
//	err = netns.Do(func(ns.NetNS) error { return iface.Configure(req.IfName, res, iface.NotifyAll) })
//	// on failure: iface.ReleaseIPAM(req, conf.IPAM.Type), then iface.DeleteCreated(netns, link)
//
// CHECK: idx, ifc, err := iface.FindInterface(prev, ifName, netnsPath), then
// iface.CheckPod(netns, ifName, iface.Want{Type: ..., MAC: ifc.Mac, ...}, idx, prev)
// (CheckLink and CheckIPs inside the netns).
// DEL: iface.Del(req, "macvlan", conf.IPAM.Type) releases the IPAM
// allocation while the link still exists (dhcp's release leaves from it),
// then deletes the link (DeleteLink tolerates a missing netns or link, and
// leaves alone a link whose alias, Mark, names another attachment).
//
// Functions documented as running "inside the netns" use the calling
// thread's namespace; call them from ns.NetNS.Do.
package iface
