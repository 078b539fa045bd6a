package dhcp

// The plugin and the daemon talk as the reference's do: Go's net/rpc
// over HTTP on a unix socket. net/rpc itself would drag net/http and
// html/template (its debug page) into every applet of the binary, about
// 2 MB, so this file speaks the same bytes with encoding/gob alone:
//
//	client: "CONNECT /_goRPC_ HTTP/1.0\n\n"
//	server: "HTTP/1.0 200 Connected to Go RPC\n\n"
//	then one gob stream each way: a request header {ServiceMethod, Seq}
//	followed by the argument, a response header {ServiceMethod, Seq,
//	Error} followed by the reply (an empty struct when Error is set).
//
// gob matches struct fields by name, not by type name, so rpcRequest and
// rpcResponse decode what net/rpc's Request and Response encode, and
// callArgs what skel.CmdArgs encodes.

import (
	"bufio"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"strings"
	"time"
)

const (
	rpcPath      = "/_goRPC_"
	rpcConnected = "200 Connected to Go RPC"
	// maxHandshake bounds the HTTP head either side reads before gob.
	maxHandshake = 4096
)

// rpcRequest is net/rpc's request header.
type rpcRequest struct {
	ServiceMethod string
	Seq           uint64
}

// rpcResponse is net/rpc's response header.
type rpcResponse struct {
	ServiceMethod string
	Seq           uint64
	Error         string
}

// callArgs is what both sides of the reference send as the argument of
// every call: skel.CmdArgs, the plugin's whole invocation.
type callArgs struct {
	ContainerID string
	Netns       string
	IfName      string
	Args        string
	Path        string
	StdinData   []byte
}

// rpcError is an error the remote side returned (as opposed to a failure
// to reach it or to speak with it).
type rpcError string

func (e rpcError) Error() string { return string(e) }

// unknownMethod says whether err is the server's answer to a method it
// does not have: a reference daemon asked for one of our extensions.
func unknownMethod(err error) bool {
	var re rpcError
	return errors.As(err, &re) && strings.HasPrefix(string(re), "rpc: can't find")
}

// rpcClient is one connection to a daemon.
type rpcClient struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	enc  *gob.Encoder
	dec  *gob.Decoder
	seq  uint64
}

// dialRPC connects to the daemon's socket and does the HTTP CONNECT
// handshake. timeout bounds the dial and the handshake only: a call may
// legitimately block for as long as the daemon's DHCP exchange takes.
func dialRPC(socket string, timeout time.Duration) (*rpcClient, error) {
	conn, err := net.DialTimeout("unix", socket, timeout)
	if err != nil {
		return nil, err
	}
	c := &rpcClient{conn: conn, r: bufio.NewReader(conn), w: bufio.NewWriter(conn)}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(conn, "CONNECT "+rpcPath+" HTTP/1.0\n\n"); err != nil {
		conn.Close()
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	head, err := readHead(c.r)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read the answer to CONNECT: %w", err)
	}
	if status, _ := strings.CutPrefix(head[0], "HTTP/1.0 "); status != rpcConnected {
		conn.Close()
		return nil, fmt.Errorf("not a Go RPC server: it answered %q", head[0])
	}
	_ = conn.SetDeadline(time.Time{})
	c.enc = gob.NewEncoder(c.w)
	c.dec = gob.NewDecoder(c.r)
	return c, nil
}

// Call sends one request and waits for its response, as net/rpc's
// Client.Call does. An error the server returned is an rpcError.
func (c *rpcClient) Call(method string, args, reply any) error {
	c.seq++
	if err := c.enc.Encode(&rpcRequest{ServiceMethod: method, Seq: c.seq}); err != nil {
		return fmt.Errorf("send %s: %w", method, err)
	}
	if err := c.enc.Encode(args); err != nil {
		return fmt.Errorf("send %s arguments: %w", method, err)
	}
	if err := c.w.Flush(); err != nil {
		return fmt.Errorf("send %s: %w", method, err)
	}
	var resp rpcResponse
	if err := c.dec.Decode(&resp); err != nil {
		return fmt.Errorf("read the answer to %s: %w", method, err)
	}
	if resp.Seq != c.seq {
		return fmt.Errorf("read the answer to %s: sequence %d, want %d", method, resp.Seq, c.seq)
	}
	if resp.Error != "" {
		// The body is an empty struct; read it so the stream stays in step.
		_ = c.dec.DecodeValue(reflect.Value{})
		return rpcError(resp.Error)
	}
	if err := c.dec.Decode(reply); err != nil {
		return fmt.Errorf("read the reply to %s: %w", method, err)
	}
	return nil
}

func (c *rpcClient) Close() error { return c.conn.Close() }

// readHead reads an HTTP head (lines up to an empty one), at most
// maxHandshake bytes, and returns its lines.
func readHead(r *bufio.Reader) ([]string, error) {
	var lines []string
	n := 0
	for {
		line, err := r.ReadString('\n')
		n += len(line)
		if err != nil {
			return nil, err
		}
		if n > maxHandshake {
			return nil, errors.New("HTTP head too long")
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			if len(lines) == 0 {
				continue // tolerate leading blank lines, as net/http does
			}
			return lines, nil
		}
		lines = append(lines, line)
	}
}

// rpcHandler serves the calls of one method: decode reads the argument,
// and the returned reply is encoded back unless there is an error.
type rpcHandler func(decode func(any) error) (reply any, err error)

// serveRPC speaks net/rpc over HTTP on one accepted connection until the
// client hangs up. Calls on one connection are served in order; the
// reference client makes one call per connection anyway.
func serveRPC(conn net.Conn, handlers map[string]rpcHandler, logf func(string, ...any)) {
	defer conn.Close()
	r := bufio.NewReader(conn)
	w := bufio.NewWriter(conn)
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	head, err := readHead(r)
	if err != nil {
		return
	}
	if method, rest, _ := strings.Cut(head[0], " "); method != "CONNECT" || !strings.HasPrefix(rest, rpcPath+" ") {
		io.WriteString(conn, "HTTP/1.0 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n405 must CONNECT\n")
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	if _, err := io.WriteString(conn, "HTTP/1.0 "+rpcConnected+"\n\n"); err != nil {
		return
	}
	enc := gob.NewEncoder(w)
	dec := gob.NewDecoder(r)
	for {
		var req rpcRequest
		if err := dec.Decode(&req); err != nil {
			if err != io.EOF && !errors.Is(err, net.ErrClosed) {
				logf("rpc: read request: %v", err)
			}
			return
		}
		resp := rpcResponse{ServiceMethod: req.ServiceMethod, Seq: req.Seq}
		var reply any = struct{}{}
		h := handlers[req.ServiceMethod]
		if h == nil {
			if err := dec.DecodeValue(reflect.Value{}); err != nil {
				return
			}
			resp.Error = "rpc: can't find method " + req.ServiceMethod
		} else {
			decoded, broken := false, false
			out, err := h(func(v any) error {
				decoded = true
				if err := dec.Decode(v); err != nil {
					broken = true
					return fmt.Errorf("rpc: decode %s arguments: %w", req.ServiceMethod, err)
				}
				return nil
			})
			if !decoded {
				if derr := dec.DecodeValue(reflect.Value{}); derr != nil {
					return
				}
			}
			_ = broken // a decode error is in err; the loop ends after answering
			if err != nil {
				resp.Error = err.Error()
			} else {
				reply = out
			}
		}
		if err := enc.Encode(&resp); err != nil {
			return
		}
		if err := enc.Encode(reply); err != nil {
			logf("rpc: send reply to %s: %v", req.ServiceMethod, err)
			return
		}
		if err := w.Flush(); err != nil {
			return
		}
		if resp.Error != "" && strings.HasPrefix(resp.Error, "rpc: decode ") {
			return
		}
	}
}
