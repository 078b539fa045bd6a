package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Sock is a netfilter netlink socket used synchronously by the calling
// goroutine: a blocking file descriptor, each request sent and its answer
// read in the same thread. A plugin asks nf_tables a few dozen questions
// per verb and every answer is ready when sendmsg returns, so the poller,
// deadline goroutine and channels of a general-purpose connection
// (github.com/mdlayher/netlink) cost more than the kernel's work: a third
// of portmap's ADD went to waking threads. It speaks the same messages
// (netlink.Message), and its errors are the kernel's errno (errors.Is
// works), so callers read the same.
type Sock struct {
	fd  int
	seq uint32
	buf []byte
}

// Dial opens a netfilter socket in the calling thread's network namespace.
func Dial() (*Sock, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("nftables: open netlink: %w", err)
	}
	// Sequence numbers only tell this socket's answers apart.
	return &Sock{fd: fd, seq: uint32(time.Now().UnixNano())}, nil
}

// Close closes the socket (see CloseSocket for when to).
func (s *Sock) Close() error { return unix.Close(s.fd) }

// BigBuffers raises the socket's buffers as Open's are (see bigBuffers):
// a transaction's acknowledgements must all fit.
func (s *Sock) BigBuffers() { forceBuffers(s.fd) }

// SetReadTimeout bounds every later wait for an answer (0: none); a wait
// that runs out fails with EAGAIN.
func (s *Sock) SetReadTimeout(d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	return unix.SetsockoptTimeval(s.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
}

// Execute sends one request and returns its answer: one message, or the
// parts of a dump (without the closing "done"). An error message from the
// kernel is returned as its errno.
func (s *Sock) Execute(m netlink.Message) ([]netlink.Message, error) {
	seq, err := s.send([]netlink.Message{m})
	if err != nil {
		return nil, err
	}
	var res []netlink.Message
	for {
		msgs, err := s.receive()
		if err != nil {
			return nil, err
		}
		more := false
		for _, r := range msgs {
			if r.Header.Sequence != seq {
				continue // a late answer to an earlier request
			}
			if r.Header.Flags&netlink.Multi != 0 {
				if r.Header.Type == netlink.Done {
					return res, nil
				}
				more = true
			}
			res = append(res, r)
		}
		if !more && len(res) > 0 {
			return res, nil
		}
	}
}

// SendMessages sends the messages in one datagram (a transaction's batch).
func (s *Sock) SendMessages(ms []netlink.Message) error {
	_, err := s.send(ms)
	return err
}

// Receive reads the next datagram's messages (an error message: its errno).
func (s *Sock) Receive() ([]netlink.Message, error) { return s.receive() }

// send numbers the messages from the next sequence number, marks them as
// requests and sends them in one datagram; it returns the first number.
func (s *Sock) send(ms []netlink.Message) (uint32, error) {
	first := s.seq + 1
	var b []byte
	for _, m := range ms {
		s.seq++
		size := unix.NLMSG_HDRLEN + len(m.Data)
		b = binary.NativeEndian.AppendUint32(b, uint32(size))
		b = binary.NativeEndian.AppendUint16(b, uint16(m.Header.Type))
		b = binary.NativeEndian.AppendUint16(b, uint16(m.Header.Flags|netlink.Request))
		b = binary.NativeEndian.AppendUint32(b, s.seq)
		b = binary.NativeEndian.AppendUint32(b, 0) // the kernel
		b = append(b, m.Data...)
		for len(b)%unix.NLMSG_ALIGNTO != 0 {
			b = append(b, 0)
		}
	}
	for {
		err := unix.Sendto(s.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("netlink send: %w", err)
		}
		return first, nil
	}
}

// receive reads one datagram, however large (its size is peeked first).
func (s *Sock) receive() ([]netlink.Message, error) {
	if s.buf == nil {
		s.buf = make([]byte, 32<<10)
	}
	for {
		n, _, err := unix.Recvfrom(s.fd, s.buf, unix.MSG_PEEK|unix.MSG_TRUNC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("netlink receive: %w", err)
		}
		if n > len(s.buf) {
			s.buf = make([]byte, n)
		}
		if n, _, err = unix.Recvfrom(s.fd, s.buf, 0); err == unix.EINTR {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("netlink receive: %w", err)
		}
		return parseMessages(s.buf[:n])
	}
}

// parseMessages splits a datagram into messages; their data is copied out
// of the socket's buffer. An error message with a non-zero errno (or a
// "done" carrying one) is returned as that errno.
func parseMessages(b []byte) ([]netlink.Message, error) {
	var msgs []netlink.Message
	for len(b) >= unix.NLMSG_HDRLEN {
		size := int(binary.NativeEndian.Uint32(b))
		if size < unix.NLMSG_HDRLEN || size > len(b) {
			return nil, errors.New("netlink receive: malformed message")
		}
		m := netlink.Message{
			Header: netlink.Header{
				Length:   uint32(size),
				Type:     netlink.HeaderType(binary.NativeEndian.Uint16(b[4:])),
				Flags:    netlink.HeaderFlags(binary.NativeEndian.Uint16(b[6:])),
				Sequence: binary.NativeEndian.Uint32(b[8:]),
				PID:      binary.NativeEndian.Uint32(b[12:]),
			},
			Data: append([]byte(nil), b[unix.NLMSG_HDRLEN:size]...),
		}
		if err := kernelError(m); err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
		next := (size + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if next > len(b) {
			break
		}
		b = b[next:]
	}
	return msgs, nil
}

// kernelError is the errno an error message (or a multi-part "done")
// carries; nil for an acknowledgement and for every other message.
func kernelError(m netlink.Message) error {
	if m.Header.Type != netlink.Error && (m.Header.Type != netlink.Done || m.Header.Flags&netlink.Multi == 0 || len(m.Data) == 0) {
		return nil
	}
	if len(m.Data) < 4 {
		return errors.New("netlink receive: short error message")
	}
	if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
		return unix.Errno(-code)
	}
	return nil
}
