package cni

import "time"

// LockName is lockName, for tests that play a stranger holding a lock.
var LockName = lockName

// SetRefusedGrace sets refusedGrace and returns a function that puts the
// old value back.
func SetRefusedGrace(d time.Duration) func() {
	old := refusedGrace
	refusedGrace = d
	return func() { refusedGrace = old }
}
