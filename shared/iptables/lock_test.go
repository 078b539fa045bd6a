package iptables

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestLock: the lock excludes within one network namespace (a second
// taker waits, then gets it when the first lets go, or fails with "try
// again" after LockWait) and not across namespaces.
func TestLock(t *testing.T) {
	testnet.RequireRoot(t)
	defer func(w time.Duration) { LockWait = w }(LockWait)
	LockWait = 300 * time.Millisecond
	a, b := testnet.NewNS(t, "a"), testnet.NewNS(t, "b")
	name := "test-" + t.Name()
	take := func(n *testnet.NS) (func(), error) {
		var unlock func()
		err := n.Do(func() error {
			var err error
			unlock, err = Lock(name)
			return err
		})
		return unlock, err
	}
	unlockA, err := take(a)
	if err != nil {
		t.Fatal(err)
	}
	// Another netns is not held up: with one lock for all it would wait
	// LockWait and fail with "try again".
	unlockB, err := take(b)
	if err != nil {
		t.Fatalf("lock in another netns: %v", err)
	}
	unlockB()
	// The same netns waits, and gives up with code 11.
	_, err = take(a)
	var e *types.Error
	if !errors.As(err, &e) || e.Code != 11 {
		t.Fatalf("busy lock: %v, want try again (11)", err)
	}
	// It is woken when the holder lets go.
	go func() { time.Sleep(50 * time.Millisecond); unlockA() }()
	unlock, err := take(a)
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	unlock()
	// A waiter that gave up does not keep the lock once it gets it.
	time.Sleep(50 * time.Millisecond)
	unlock, err = take(a)
	if err != nil {
		t.Fatalf("lock left held by an abandoned waiter: %v", err)
	}
	unlock()
	if _, err := os.Stat("/run/cnibox/" + name + ".lock"); err == nil {
		t.Error("the lock left a file in /run/cnibox")
	}
}
