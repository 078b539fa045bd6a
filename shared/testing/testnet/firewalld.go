package testnet

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

const busConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`

// Firewalld is Debian's real firewalld running in a node's netns, attached
// to a private system bus (a dbus-daemon of the test's own) at Addr. The
// test points the plugins at it with DBUS_SYSTEM_BUS_ADDRESS=Addr.
type Firewalld struct{ Addr string }

// StartFirewalld starts the bus and firewalld in node and returns once
// firewalld answers; both are stopped when the test ends. It skips the
// test when firewalld or dbus-daemon is not installed.
func StartFirewalld(t testing.TB, node *NS) *Firewalld {
	t.Helper()
	for _, bin := range []string{"firewalld", "dbus-daemon"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (make test installs it): %v", bin, err)
		}
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "system_bus_socket")
	conf := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(busConfig, sock)), 0o644); err != nil {
		t.Fatal(err)
	}
	f := &Firewalld{Addr: "unix:path=" + sock}
	bus := exec.Command("dbus-daemon", "--config-file="+conf, "--nofork", "--nopidfile")
	if err := bus.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bus.Process.Kill(); _ = bus.Wait() })
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the test's system bus did not come up at %s", sock)
		}
	}
	var log strings.Builder
	// firewalld keeps state in /run/firewalld and logs to
	// /var/log/firewalld: here /run is a tmpfs of its own (a mount in the
	// mount namespace "ip netns exec" gives it, which stays there) and
	// the log goes to the test's output.
	fwd := node.Command("sh", "-c", `mount -t tmpfs cnibox-test /run && exec "$@"`, "sh",
		"env", "DBUS_SYSTEM_BUS_ADDRESS="+f.Addr, "firewalld", "--nofork", "--nopid", "--log-target", "console")
	fwd.Stdout, fwd.Stderr = &log, &log
	if err := fwd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fwd.Process.Kill(); _ = fwd.Wait() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		// firewalld answers once it has loaded its configuration.
		var zone string
		err := f.Call("getDefaultZone", &zone)
		if err == nil {
			return f
		}
		if time.Now().After(deadline) {
			t.Fatalf("firewalld did not come up: %v\n%s", err, log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Call calls org.fedoraproject.FirewallD1.method with args and stores the
// answer in out (nil: no answer wanted).
func (f *Firewalld) Call(method string, out any, args ...any) error {
	conn, err := dbus.Connect(f.Addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	call := conn.Object("org.fedoraproject.FirewallD1", "/org/fedoraproject/FirewallD1").
		CallWithContext(ctx, "org.fedoraproject.FirewallD1."+method, 0, args...)
	if out == nil {
		return call.Err
	}
	return call.Store(out)
}
