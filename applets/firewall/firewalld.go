package firewall

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"
)

// firewalld's D-Bus API (the same calls as the reference): the pod's
// addresses become sources of a zone (trusted by default).
const (
	fwdName  = "org.fedoraproject.FirewallD1"
	fwdPath  = "/org/fedoraproject/FirewallD1"
	fwdZone  = "org.fedoraproject.FirewallD1.zone"
	dbusTime = 10 * time.Second // bound every call: a wedged bus must not hang a pod
)

type firewalld struct{}

// systemBus connects to the system bus (DBUS_SYSTEM_BUS_ADDRESS or the
// standard socket) with a private connection closed by the caller.
func systemBus() (*dbus.Conn, error) {
	c, err := dbus.SystemBusPrivate()
	if err != nil {
		return nil, fmt.Errorf("firewalld: connect to the system bus: %w", err)
	}
	if err := c.Auth(nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("firewalld: system bus auth: %w", err)
	}
	if err := c.Hello(); err != nil {
		c.Close()
		return nil, fmt.Errorf("firewalld: system bus hello: %w", err)
	}
	return c, nil
}

func call(c *dbus.Conn, method string, out any, args ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), dbusTime)
	defer cancel()
	call := c.Object(fwdName, fwdPath).CallWithContext(ctx, fwdZone+"."+method, 0, args...)
	if call.Err != nil {
		return call.Err
	}
	if out != nil {
		return call.Store(out)
	}
	return nil
}

// firewalldRunning reports whether firewalld owns its name on the system bus.
func firewalldRunning() bool {
	c, err := systemBus()
	if err != nil {
		return false
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), dbusTime)
	defer cancel()
	var owner string
	return c.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetNameOwner", 0, fwdName).Store(&owner) == nil
}

func (firewalld) usable() error {
	if !firewalldRunning() {
		return fmt.Errorf("firewalld is not running on the system bus")
	}
	return nil
}

func (firewalld) add(a *attachment) error {
	return setSources(a, "addSource", "ZONE_ALREADY_SET", "add %s to zone %s")
}

func (firewalld) del(a *attachment) error {
	return setSources(a, "removeSource", "UNKNOWN_SOURCE", "remove %s from zone %s")
}

// setSources calls method (addSource or removeSource) of a's zone for each
// of a's addresses on one bus connection. An error naming done (firewalld
// refusing because it is done already) is success; others are reported
// as what (a format of the address and the zone).
func setSources(a *attachment, method, done, what string) error {
	c, err := systemBus()
	if err != nil {
		return err
	}
	defer c.Close()
	for _, ip := range a.IPs {
		var zone string
		if err := call(c, method, &zone, a.Zone, ip.String()); err != nil && !strings.Contains(err.Error(), done) {
			return fmt.Errorf(what+": %w", ip, a.Zone, err)
		}
	}
	return nil
}

func (firewalld) check(a *attachment) error {
	c, err := systemBus()
	if err != nil {
		return err
	}
	defer c.Close()
	for _, ip := range a.IPs {
		var in bool
		if err := call(c, "querySource", &in, a.Zone, ip.String()); err != nil {
			return fmt.Errorf("query %s in zone %s: %w", ip, a.Zone, err)
		}
		if !in {
			return fmt.Errorf("%s is not a source of zone %s", ip, a.Zone)
		}
	}
	return nil
}

// firewalld has no bridge isolation: ingressPolicy goes to iptables (see
// isolationBackend), so these are never called.
func (firewalld) isolate(*attachment) error   { return nil }
func (firewalld) unisolate(*attachment) error { return nil }
