package bandwidth

import (
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
)

// ifbName is the reference's name for an attachment's IFB: "bwp" and the
// hex SHA-512 of network name + container ID, cut to 15 characters. Keeping
// it lets a node switch between cnibox and the reference plugin.
func ifbName(network, containerID string) string {
	sum := sha512.Sum512([]byte(network + containerID))
	return ("bwp" + hex.EncodeToString(sum[:]))[:15]
}

// IFB returns the name and alias of the IFB bandwidth makes for an
// attachment: the one-exec chain (applets/chain) deletes it together with
// the pod's veth, in one request.
func IFB(network, containerID string) (name, alias string) {
	return ifbName(network, containerID), ifbAlias(network, containerID)
}

// aliasPrefix starts the alias of every IFB cnibox makes. The name is a
// hash that cannot be turned back into its network, so the alias says
// "cnibox-bandwidth <network> <containerID>": GC uses the network to find
// its own IFBs (and only those) and the container ID is there for people.
const aliasPrefix = "cnibox-bandwidth "

// maxAlias is IFALIASZ - 1: the kernel's limit on an alias.
const maxAlias = 255

func ifbAlias(network, containerID string) string {
	return truncate(aliasPrefix+network+" "+containerID, maxAlias)
}

// ifbOfNetwork reports whether an alias marks an IFB of network.
func ifbOfNetwork(alias, network string) bool {
	return strings.HasPrefix(alias, truncate(aliasPrefix+network+" ", maxAlias))
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// ensureIFB creates the attachment's IFB (up, txqlen 0 as the reference
// makes it, the host veth's MTU) or takes over the one an earlier attempt
// left. created says whether this call made it (also on error, so that
// the caller's roll-back removes only what it made).
func ensureIFB(name, alias string, mtu int) (link netlink.Link, created bool, err error) {
	link, err = netlinksafe.LinkByName(name)
	if err == nil {
		if link.Type() != "ifb" {
			return nil, false, fmt.Errorf("%s exists and is a %s, not an ifb", name, link.Type())
		}
		if err := netlink.LinkSetMTU(link, mtu); err != nil {
			return nil, false, fmt.Errorf("set MTU of %s: %w", name, err)
		}
		if err := netlink.LinkSetAlias(link, alias); err != nil {
			return nil, false, fmt.Errorf("set alias of %s: %w", name, err)
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return nil, false, fmt.Errorf("set %s up: %w", name, err)
		}
		return link, false, nil
	}
	var nf netlink.LinkNotFoundError
	if !errors.As(err, &nf) {
		return nil, false, fmt.Errorf("look up %s: %w", name, err)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU, attrs.TxQLen, attrs.Flags = name, mtu, 0, net.FlagUp
	if err := netlink.LinkAdd(&netlink.Ifb{LinkAttrs: attrs}); err != nil {
		return nil, false, fmt.Errorf("create %s: %w", name, err)
	}
	link, err = netlinksafe.LinkByName(name)
	if err != nil {
		return nil, true, fmt.Errorf("look up new %s: %w", name, err)
	}
	// The kernel ignores IFLA_IFALIAS when it creates a link.
	if err := netlink.LinkSetAlias(link, alias); err != nil {
		return nil, true, fmt.Errorf("set alias of %s: %w", name, err)
	}
	link.Attrs().Alias = alias
	return link, true, nil
}

// deleteIFB removes an IFB by name; one that does not exist is fine, and a
// link of that name that is not an IFB is left alone.
func deleteIFB(name string) error {
	link, err := netlinksafe.LinkByName(name)
	if err != nil {
		return ignoreGone(err)
	}
	if link.Type() != "ifb" {
		return nil
	}
	return ignoreGone(netlink.LinkDel(link))
}
