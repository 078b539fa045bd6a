package dhcp

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/cnibox/cnibox/shared/cni"
)

// daemon holds the leases of the node's pods and keeps them alive. It is
// the long-running half of the applet ("dhcp daemon").
type daemon struct {
	hostPrefix    string
	broadcast     bool
	timeout       time.Duration
	resendMax     time.Duration
	resendTimeout time.Duration
	store         *store
	log           *log.Logger
	pending       string // pendingDir of the socket: releases recorded while down

	mu     sync.Mutex
	leases map[string]*lease
	// busy serializes the calls for one client ID (an ADD racing its DEL).
	busy map[string]*keyLock
}

// keyLock is a lock for one client ID, dropped when nobody holds or
// waits for it.
type keyLock struct {
	mu    sync.Mutex
	users int
}

// Main is the applet's argv mode: "dhcp daemon [flags]".
func Main(args []string) int {
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Println("usage: dhcp daemon [flags]: the DHCP client daemon the dhcp IPAM plugin talks to ('dhcp daemon --help' lists the flags);\n" +
			"without arguments dhcp runs as a CNI IPAM plugin (CNI_COMMAND and friends in the environment, config on stdin)")
		return 0
	}
	if args[0] != "daemon" {
		fmt.Fprintf(os.Stderr, "dhcp: unknown mode %q; usage: dhcp daemon [flags] (dhcp daemon -h lists them)\n", args[0])
		return 2
	}
	fs := flag.NewFlagSet("dhcp daemon", flag.ContinueOnError)
	pidfile := fs.String("pidfile", "", "write the daemon's PID to this file (removed on exit)")
	hostPrefix := fs.String("hostprefix", "", "prefix applied to the socket path and to netns paths, for a daemon that runs in a container with the host's root mounted there")
	socketPath := fs.String("socketpath", "", "the daemon's unix socket (default "+DefaultSocketPath+")")
	broadcast := fs.Bool("broadcast", false, "set the broadcast flag in DISCOVER and REQUEST, for servers or networks that cannot unicast to a client without an address")
	timeout := fs.Duration("timeout", 10*time.Second, "wait this long for an answer to one DHCP message")
	resendMax := fs.Duration("resendmax", 62*time.Second, "longest wait between two attempts to get a lease")
	resendTimeout := fs.Duration("resendtimeout", 208*time.Second, "give up getting a lease after this long")
	leaseFile := fs.String("leasefile", "/var/lib/cni/dhcp/leases.json", "record leases here (0600) and resume them on start; empty keeps them in memory only")
	for _, a := range args[1:] {
		if a == "-h" || a == "-help" || a == "--help" {
			fs.SetOutput(os.Stdout)
		}
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "dhcp daemon: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *pidfile != "" && !filepath.IsAbs(*pidfile) {
		fmt.Fprintf(os.Stderr, "dhcp daemon: -pidfile %q must be an absolute path\n", *pidfile)
		return 2
	}
	if *timeout <= 0 || *resendMax <= 0 || *resendTimeout <= 0 {
		fmt.Fprintln(os.Stderr, "dhcp daemon: -timeout, -resendmax and -resendtimeout must be positive")
		return 2
	}
	if *socketPath == "" {
		*socketPath = DefaultSocketPath
	}
	logger := log.New(os.Stderr, "dhcp daemon: ", log.LstdFlags)
	st, err := openStore(*leaseFile)
	if err != nil {
		logger.Print(err)
		return 1
	}
	d := &daemon{
		hostPrefix: *hostPrefix, broadcast: *broadcast, timeout: *timeout,
		resendMax: *resendMax, resendTimeout: *resendTimeout,
		store: st, log: logger,
		leases: map[string]*lease{}, busy: map[string]*keyLock{},
	}
	if err := d.run(*hostPrefix+*socketPath, *pidfile); err != nil {
		logger.Print(err)
		return 1
	}
	return 0
}

func (d *daemon) logf(format string, a ...any) { d.log.Printf(format, a...) }

// run listens (or takes the socket systemd passed), serves until SIGINT or
// SIGTERM, and then removes what it created. Leases are not released on
// exit: they are on disk, and the next daemon resumes them.
func (d *daemon) run(socketPath, pidfile string) error {
	ln, created, err := listen(socketPath)
	if err != nil {
		return err
	}
	if pidfile != "" {
		if err := os.WriteFile(pidfile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			ln.Close()
			return fmt.Errorf("write pidfile: %w", err)
		}
	}
	cleanup := func() {
		ln.Close()
		if created {
			os.Remove(socketPath)
		}
		if pidfile != "" {
			os.Remove(pidfile)
		}
	}
	defer cleanup()

	d.resume()
	d.pending = pendingDir(socketPath)
	d.releasePending()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		d.logf("%v: shutting down; leases stay recorded for the next start", s)
		ln.Close()
	}()
	if created {
		d.logf("serving on %s", socketPath)
	} else {
		d.logf("serving on the socket systemd passed (socket activation)")
	}
	handlers := d.handlers()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		go serveRPC(conn, handlers, d.logf)
	}
}

// listen returns the socket systemd passed (LISTEN_FDS) or a new one at
// path, in a directory of mode 0700, the socket itself 0660. created says
// whether the file is ours to remove.
func listen(path string) (net.Listener, bool, error) {
	if ln, err := activationListener(); ln != nil || err != nil {
		return ln, false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, fmt.Errorf("create socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, false, fmt.Errorf("%s: another daemon is already serving there", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("remove stale socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, false, fmt.Errorf("listen: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, false, fmt.Errorf("chmod socket: %w", err)
	}
	return ln, true, nil
}

// activationListener implements the listening half of systemd's socket
// activation: LISTEN_PID is us and LISTEN_FDS=1 means fd 3 is our socket.
func activationListener() (net.Listener, error) {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
		return nil, nil
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n == 0 {
		return nil, nil
	}
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	if n != 1 {
		return nil, fmt.Errorf("socket activation passed %d sockets; the daemon takes exactly one", n)
	}
	syscall.CloseOnExec(3)
	f := os.NewFile(3, "LISTEN_FD_3")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	return ln, nil
}

// resume restarts the maintenance of every recorded lease.
func (d *daemon) resume() {
	for _, rec := range d.store.all() {
		conf, err := parseConfig(rec.Config)
		var ack *dhcpv4.DHCPv4
		if err == nil {
			ack, err = dhcpv4.FromBytes(rec.ACK)
		}
		if err == nil {
			if _, serr := os.Stat(d.hostPrefix + rec.Netns); errors.Is(serr, os.ErrNotExist) {
				err = fmt.Errorf("its netns %s is gone", rec.Netns)
			}
		}
		if err != nil {
			d.logf("%s: dropping the recorded lease: %v", rec.ClientID, err)
			_ = d.store.remove(rec.ClientID)
			continue
		}
		l := newLease(d, rec, conf, ack)
		d.mu.Lock()
		d.leases[rec.ClientID] = l
		d.mu.Unlock()
		t1, _, _ := l.times()
		d.logf("%s: resuming lease on %s (renewal due %s)", rec.ClientID, ack.YourIPAddr, t1.Format(time.RFC3339))
		go l.maintain()
	}
}

// lock serializes the calls for one client ID.
func (d *daemon) lock(id string) func() {
	d.mu.Lock()
	k := d.busy[id]
	if k == nil {
		k = &keyLock{}
		d.busy[id] = k
	}
	k.users++
	d.mu.Unlock()
	k.mu.Lock()
	return func() {
		k.mu.Unlock()
		d.mu.Lock()
		if k.users--; k.users == 0 {
			delete(d.busy, id)
		}
		d.mu.Unlock()
	}
}

func (d *daemon) get(id string) *lease {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.leases[id]
}

// forget drops a lease whose interface is gone, without a release.
func (d *daemon) forget(l *lease) {
	d.mu.Lock()
	if d.leases[l.rec.ClientID] == l {
		delete(d.leases, l.rec.ClientID)
	}
	d.mu.Unlock()
	if err := d.store.remove(l.rec.ClientID); err != nil {
		d.logf("%s: %v", l.rec.ClientID, err)
	}
}

func (d *daemon) handlers() map[string]rpcHandler {
	call := func(f func(*callArgs) (any, error)) rpcHandler {
		return func(decode func(any) error) (any, error) {
			args := &callArgs{}
			if err := decode(args); err != nil {
				return nil, err
			}
			return f(args)
		}
	}
	return map[string]rpcHandler{
		"DHCP.Allocate": call(func(a *callArgs) (any, error) { return d.allocate(a) }),
		"DHCP.Release":  call(func(a *callArgs) (any, error) { return struct{}{}, d.release(a) }),
		"DHCP.Check":    call(func(a *callArgs) (any, error) { return d.check(a) }),
		"DHCP.GC":       call(func(a *callArgs) (any, error) { return struct{}{}, d.gc(a) }),
		"DHCP.Status":   call(func(a *callArgs) (any, error) { return struct{}{}, nil }),
		"DHCP.Stats":    call(func(a *callArgs) (any, error) { return d.stats(), nil }),
	}
}

// allocate returns the attachment's lease, getting one first when there
// is none. (A reference plugin calls it for CHECK too.)
func (d *daemon) allocate(a *callArgs) (*current.Result, error) {
	conf, err := parseConfig(a.StdinData)
	if err != nil {
		return nil, err
	}
	id := clientID(a.ContainerID, conf.Name, a.IfName)
	defer d.lock(id)()
	if l := d.get(id); l != nil && !l.expired() {
		return l.result()
	}
	rec := record{
		ClientID: id, ContainerID: a.ContainerID, Network: conf.Name, IfName: a.IfName,
		Netns: a.Netns, Args: a.Args, Config: a.StdinData,
	}
	ack, err := d.acquire(context.Background(), rec, conf, nil)
	if errors.Is(err, errGone) {
		return nil, fmt.Errorf("dhcp: %s: no interface %s in netns %s to ask a DHCP server on (the main plugin must create it before it calls IPAM ADD)",
			id, a.IfName, a.Netns)
	}
	if err != nil {
		return nil, fmt.Errorf("dhcp: %s: %w", id, err)
	}
	if old := d.get(id); old != nil {
		old.cancel()
		<-old.done
	}
	rec.ACK, rec.Bound = ack.ToBytes(), time.Now()
	l := newLease(d, rec, conf, ack)
	res, err := l.result()
	if err != nil {
		return nil, err
	}
	if err := d.store.put(rec); err != nil {
		d.logf("%s: record lease: %v", id, err)
	}
	d.mu.Lock()
	d.leases[id] = l
	d.mu.Unlock()
	go l.maintain()
	d.logf("%s: leased %s from %s for %v", id, ack.YourIPAddr, ack.ServerIdentifier(), ack.IPAddressLeaseTime(time.Hour))
	return res, nil
}

// release stops a lease and tells the server. No lease is no error: DEL
// must succeed when there is nothing to undo.
func (d *daemon) release(a *callArgs) error {
	conf, err := parseConfig(a.StdinData)
	if err != nil {
		return err
	}
	return d.releaseID(clientID(a.ContainerID, conf.Name, a.IfName))
}

func (d *daemon) releaseID(id string) error {
	defer d.lock(id)()
	l := d.get(id)
	if l == nil {
		return nil
	}
	l.cancel()
	<-l.done
	if err := l.release(); err != nil {
		d.logf("%s: release: %v (the server will let the lease expire)", id, err)
	} else {
		d.logf("%s: released %s", id, l.ip())
	}
	d.forget(l)
	return nil
}

// check reports the attachment's lease without getting a new one.
func (d *daemon) check(a *callArgs) (*current.Result, error) {
	conf, err := parseConfig(a.StdinData)
	if err != nil {
		return nil, err
	}
	id := clientID(a.ContainerID, conf.Name, a.IfName)
	l := d.get(id)
	if l == nil {
		return nil, fmt.Errorf("dhcp: no lease for %s", id)
	}
	if l.expired() {
		return nil, fmt.Errorf("dhcp: the lease of %s on %s has expired", id, l.ip())
	}
	return l.result()
}

// gc releases the leases of the network whose attachment is not in the
// request's valid list.
func (d *daemon) gc(a *callArgs) error {
	conf, err := parseConfig(a.StdinData)
	if err != nil {
		return err
	}
	req := &cni.Request{Config: a.StdinData}
	valid, err := req.ValidAttachments()
	if err != nil {
		return err
	}
	d.releasePending()
	var stale []string
	d.mu.Lock()
	for id, l := range d.leases {
		if l.rec.Network == conf.Name && !valid[cni.Attachment{ContainerID: l.rec.ContainerID, IfName: l.rec.IfName}] {
			stale = append(stale, id)
		}
	}
	d.mu.Unlock()
	for _, id := range stale {
		d.logf("%s: not a valid attachment any more: releasing", id)
		_ = d.releaseID(id)
	}
	return nil
}

// daemonStats is what DHCP.Stats answers: what a long-running daemon must
// keep flat (the soak test watches it, with RSS and open files from /proc).
type daemonStats struct {
	Goroutines int
	Leases     int
}

func (d *daemon) stats() daemonStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return daemonStats{Goroutines: runtime.NumGoroutine(), Leases: len(d.leases)}
}
