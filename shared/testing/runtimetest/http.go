package runtimetest

import (
	"fmt"
	"io"
	"net"
	"time"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// HTTPGetIn fetches / from addr (host:port) with HTTP/1.0 from inside ns
// and returns the whole response. The socket is made on the namespace's
// thread, so the request leaves from ns.
func HTTPGetIn(ns *testnet.NS, addr string) (string, error) {
	var body []byte
	err := ns.Do(func() error {
		conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", addr); err != nil {
			return err
		}
		body, err = io.ReadAll(conn)
		return err
	})
	return string(body), err
}
