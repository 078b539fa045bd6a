// Package runtimetest runs the real container runtimes — containerd
// through CRI, ctr, podman, cnitool — against cnibox on a throwaway node,
// and holds the end-to-end tests that prove cnibox works under them.
//
// Every runtime runs inside a node network namespace (testnet.NewNS) and a
// private mount namespace in which the paths a runtime or plugin would use
// by default (/var/lib/cni, /run/containerd, /etc/cni/net.d, /opt/cni/bin,
// /run/containers, /var/lib/containers) are the test's own directories, so
// nothing touches the machine's root netns, iptables, runtime state or CNI
// state, and everything goes away with the namespaces.
//
// The CNI plugin directory is one made by "cnibox install"; a plugin
// cnibox does not have yet is a link to the reference plugin, and the
// tests say which side ran (Plugins.Describe), so the same tests exercise
// cnibox's applets as they land with no change.
package runtimetest
