package nft

import (
	"fmt"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Chain names a regular chain (no hook) and the comment it carries.
type Chain struct{ Name, Comment string }

// CreateCommented creates a table with comment, and chains in it, each
// with its comment, where they do not exist yet, in one transaction. The
// reference plugins' tables and chains carry comments that nft(8) shows,
// and google/nftables cannot set them; a table or chain that exists keeps
// its own (NLM_F_CREATE without NLM_F_EXCL). The answer is awaited for at
// most wait.
func CreateCommented(fam nftables.TableFamily, table, comment string, wait time.Duration, chains ...Chain) error {
	const (
		tableUserdata = 6  // NFTA_TABLE_USERDATA
		chainUserdata = 12 // NFTA_CHAIN_USERDATA
		udataComment  = 0  // NFTNL_UDATA_TABLE_COMMENT, NFTNL_UDATA_CHAIN_COMMENT
	)
	str := func(s string) []byte { return []byte(s + "\x00") }
	newMsg := func(typ int, attrs []netlink.Attribute) (netlink.Message, error) {
		b, err := netlink.MarshalAttributes(attrs)
		return netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ),
				Flags: netlink.Request | netlink.Create | netlink.Acknowledge},
			Data: append([]byte{byte(fam), unix.NFNETLINK_V0, 0, 0}, b...),
		}, err
	}
	subsys := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}
	msgs := []netlink.Message{{Header: netlink.Header{Type: unix.NFNL_MSG_BATCH_BEGIN, Flags: netlink.Request}, Data: subsys}}
	m, err := newMsg(unix.NFT_MSG_NEWTABLE, []netlink.Attribute{
		{Type: unix.NFTA_TABLE_NAME, Data: str(table)},
		{Type: tableUserdata, Data: userdata.AppendString(nil, udataComment, comment)}})
	if err != nil {
		return err
	}
	msgs = append(msgs, m)
	for _, ch := range chains {
		m, err := newMsg(unix.NFT_MSG_NEWCHAIN, []netlink.Attribute{
			{Type: unix.NFTA_CHAIN_TABLE, Data: str(table)},
			{Type: unix.NFTA_CHAIN_NAME, Data: str(ch.Name)},
			{Type: chainUserdata, Data: userdata.AppendString(nil, udataComment, ch.Comment)}})
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
	}
	msgs = append(msgs, netlink.Message{Header: netlink.Header{Type: unix.NFNL_MSG_BATCH_END, Flags: netlink.Request}, Data: subsys})

	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	defer conn.Close()
	if err := conn.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return err
	}
	if _, err := conn.SendMessages(msgs); err != nil {
		return err
	}
	for want := 1 + len(chains); want > 0; { // one acknowledgement a message
		got, err := conn.Receive()
		if err != nil {
			return err
		}
		want -= len(got)
	}
	return nil
}
