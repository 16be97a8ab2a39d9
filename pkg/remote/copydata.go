package remote

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// On a host that allows SFTP only, a copy on the host itself still need not cross the
// link: OpenSSH's SFTP server (9.0 and later, internal-sftp too) offers the copy-data
// extension (draft-ietf-secsh-filexfer-extensions-00), which copies between two
// handles it holds. pkg/sftp does not wrap it, so Copy speaks it on an SFTP session
// of its own: version 3's open, close and extended requests, and nothing else. Several
// requests may be in flight; the server answers each in turn.

// copyDataOK is false to stream copies through this client even where the server
// offers copy-data (the tests cover both paths).
var copyDataOK = true

// SFTP version 3 packet types and open flags used here.
const (
	fxpInit     = 1
	fxpVersion  = 2
	fxpOpen     = 3
	fxpClose    = 4
	fxpExtended = 200
	fxpStatus   = 101
	fxpHandle   = 102

	fxfRead  = 0x01
	fxfWrite = 0x02
	fxfCreat = 0x08
	fxfTrunc = 0x10

	rawMaxPacket = 256 << 10 // replies here are small; a longer one is a protocol error

	closeTimeout = 30 * time.Second
)

// rawSFTP is the minimal SFTP client of copy-data.
type rawSFTP struct {
	s    *ssh.Session
	in   io.WriteCloser
	exts map[string]string

	wmu  sync.Mutex // one packet written at a time
	mu   sync.Mutex
	id   uint32
	wait map[uint32]chan rawReply
	err  error         // why the reader stopped
	done chan struct{} // closed when it stops
}

type rawReply struct {
	typ  byte
	data []byte // after the request id
}

// statusError is an SFTP status other than OK.
type statusError struct {
	code uint32
	msg  string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("%s (SFTP status %d)", e.msg, e.code)
}

func (e *statusError) Is(target error) bool {
	switch e.code {
	case 2: // SSH_FX_NO_SUCH_FILE
		return target == fs.ErrNotExist
	case 3: // SSH_FX_PERMISSION_DENIED
		return target == fs.ErrPermission
	}
	return false
}

// openRawSFTP starts an SFTP session for copy-data. It fails when the server does not
// answer as version 3 with copy-data.
func (c *Conn) openRawSFTP(ctx context.Context) (*rawSFTP, error) {
	s, err := c.ssh.NewSession()
	if err != nil {
		return nil, wrapConn(c.ssh, "sftp session", err)
	}
	r := &rawSFTP{s: s, wait: map[uint32]chan rawReply{}, done: make(chan struct{})}
	in, err := s.StdinPipe()
	if err == nil {
		r.in = in
		var out io.Reader
		if out, err = s.StdoutPipe(); err == nil {
			if err = s.RequestSubsystem("sftp"); err == nil {
				err = r.handshake(ctx, out)
			}
		}
	}
	if err != nil {
		s.Close()
		return nil, wrapConn(c.ssh, "sftp session", err)
	}
	if _, ok := r.exts["copy-data"]; !ok {
		r.close()
		return nil, errors.New("the server's SFTP session does not offer copy-data")
	}
	return r, nil
}

// handshake sends INIT and reads VERSION with its extensions, then starts the reader.
func (r *rawSFTP) handshake(ctx context.Context, out io.Reader) error {
	if err := r.write(fxpInit, binary.BigEndian.AppendUint32(nil, 3)); err != nil {
		return err
	}
	type version struct {
		p   []byte
		err error
	}
	got := make(chan version, 1)
	go func() {
		p, err := readPacket(out)
		got <- version{p, err}
	}()
	var v version
	select {
	case v = <-got:
	case <-ctx.Done():
		return ctx.Err()
	}
	if v.err != nil {
		return v.err
	}
	if len(v.p) < 5 || v.p[0] != fxpVersion {
		return fmt.Errorf("sftp: unexpected reply %d to init", v.p[0])
	}
	r.exts = map[string]string{}
	for rest := v.p[5:]; len(rest) > 0; {
		name, rest2, ok := takeString(rest)
		if !ok {
			break
		}
		data, rest3, ok := takeString(rest2)
		if !ok {
			break
		}
		r.exts[string(name)] = string(data)
		rest = rest3
	}
	go r.read(out)
	return nil
}

// read dispatches replies by request id until the session ends.
func (r *rawSFTP) read(out io.Reader) {
	var err error
	for {
		var p []byte
		if p, err = readPacket(out); err != nil {
			break
		}
		if len(p) < 5 {
			err = errors.New("sftp: short packet")
			break
		}
		id := binary.BigEndian.Uint32(p[1:5])
		r.mu.Lock()
		ch := r.wait[id]
		delete(r.wait, id)
		r.mu.Unlock()
		if ch != nil {
			ch <- rawReply{typ: p[0], data: p[5:]}
		}
	}
	r.mu.Lock()
	r.err = err
	r.mu.Unlock()
	close(r.done)
}

func readPacket(rd io.Reader) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(rd, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size == 0 || size > rawMaxPacket {
		return nil, fmt.Errorf("sftp: packet of %d bytes", size)
	}
	p := make([]byte, size)
	if _, err := io.ReadFull(rd, p); err != nil {
		return nil, err
	}
	return p, nil
}

func (r *rawSFTP) write(typ byte, payload []byte) error {
	p := binary.BigEndian.AppendUint32(make([]byte, 0, 5+len(payload)), uint32(1+len(payload)))
	p = append(append(p, typ), payload...)
	r.wmu.Lock()
	defer r.wmu.Unlock()
	_, err := r.in.Write(p)
	return err
}

// request sends a request of type typ (body after the id) and waits for its reply.
func (r *rawSFTP) request(ctx context.Context, typ byte, body []byte) (rawReply, error) {
	ch := make(chan rawReply, 1)
	r.mu.Lock()
	if r.err != nil {
		err := r.err
		r.mu.Unlock()
		return rawReply{}, err
	}
	r.id++
	id := r.id
	r.wait[id] = ch
	r.mu.Unlock()
	if err := r.write(typ, append(binary.BigEndian.AppendUint32(nil, id), body...)); err != nil {
		r.forget(id)
		return rawReply{}, err
	}
	select {
	case rep := <-ch:
		return rep, nil
	case <-r.done:
		r.mu.Lock()
		err := r.err
		r.mu.Unlock()
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return rawReply{}, err
	case <-ctx.Done():
		r.forget(id)
		return rawReply{}, ctx.Err()
	}
}

func (r *rawSFTP) forget(id uint32) {
	r.mu.Lock()
	delete(r.wait, id)
	r.mu.Unlock()
}

// status turns a reply that must be a status into nil (OK) or an error.
func status(rep rawReply) error {
	if rep.typ != fxpStatus {
		return fmt.Errorf("sftp: reply %d where a status was due", rep.typ)
	}
	if len(rep.data) < 4 {
		return errors.New("sftp: short status")
	}
	code := binary.BigEndian.Uint32(rep.data)
	if code == 0 {
		return nil
	}
	msg, _, _ := takeString(rep.data[4:])
	return &statusError{code: code, msg: string(msg)}
}

// open opens p with the given SFTP flags and returns its handle.
func (r *rawSFTP) open(ctx context.Context, p string, flags uint32) ([]byte, error) {
	body := appendString(nil, p)
	body = binary.BigEndian.AppendUint32(body, flags)
	body = binary.BigEndian.AppendUint32(body, 0) // no attributes
	rep, err := r.request(ctx, fxpOpen, body)
	if err != nil {
		return nil, err
	}
	if rep.typ != fxpHandle {
		return nil, status(rep)
	}
	h, _, ok := takeString(rep.data)
	if !ok {
		return nil, errors.New("sftp: bad handle")
	}
	return h, nil
}

// closeHandle closes h, even once ctx is done (the handle would stay open on the
// server until the session ends), within closeTimeout.
func (r *rawSFTP) closeHandle(ctx context.Context, h []byte) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
	defer cancel()
	rep, err := r.request(ctx, fxpClose, appendString(nil, string(h)))
	if err != nil {
		return err
	}
	return status(rep)
}

// copyData copies from the start of in to its end into out from its start, on the
// server.
func (r *rawSFTP) copyData(ctx context.Context, in, out []byte) error {
	body := appendString(nil, "copy-data")
	body = appendString(body, string(in))
	body = binary.BigEndian.AppendUint64(body, 0) // read from offset 0
	body = binary.BigEndian.AppendUint64(body, 0) // length 0: up to the end of in
	body = appendString(body, string(out))
	body = binary.BigEndian.AppendUint64(body, 0) // write at offset 0
	rep, err := r.request(ctx, fxpExtended, body)
	if err != nil {
		return err
	}
	return status(rep)
}

// fsync flushes the file behind h to stable storage (fsync@openssh.com), where offered.
func (r *rawSFTP) fsync(ctx context.Context, h []byte) error {
	if r.exts["fsync@openssh.com"] != "1" {
		return nil
	}
	rep, err := r.request(ctx, fxpExtended, appendString(appendString(nil, "fsync@openssh.com"), string(h)))
	if err != nil {
		return err
	}
	return status(rep)
}

func (r *rawSFTP) close() {
	_ = r.in.Close()
	_ = r.s.Close()
}

func appendString(b []byte, s string) []byte {
	return append(binary.BigEndian.AppendUint32(b, uint32(len(s))), s...)
}

func takeString(b []byte) (s, rest []byte, ok bool) {
	if len(b) < 4 {
		return nil, nil, false
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(len(b)-4) < uint64(n) {
		return nil, nil, false
	}
	return b[4 : 4+n], b[4+n:], true
}

// copyOnHost copies the regular file src to dst on the host with copy-data: dst is
// created or truncated, flushed, and given src's mode and modification time.
func (c *Conn) copyOnHost(ctx context.Context, r *rawSFTP, src, dst string, fi os.FileInfo, prog *Progress) error {
	if testHookCopyData != nil {
		testHookCopyData(src)
	}
	in, err := r.open(ctx, src, fxfRead)
	if err != nil {
		return c.pathErr("open", src, err)
	}
	defer func() { _ = r.closeHandle(ctx, in) }()
	out, err := r.open(ctx, dst, fxfWrite|fxfCreat|fxfTrunc)
	if err != nil {
		return c.writeErr(dst, err)
	}
	err = r.copyData(ctx, in, out)
	if err == nil {
		err = r.fsync(ctx, out)
	}
	if cerr := r.closeHandle(ctx, out); err == nil {
		err = cerr
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return c.writeErr(dst, fmt.Errorf("copy-data from %s: %w", src, err))
	}
	prog.add(fi.Size())
	_ = c.sftp.Chmod(dst, fi.Mode().Perm())
	_ = c.sftp.Chtimes(dst, fi.ModTime(), fi.ModTime())
	return nil
}

// testHookCopyData, when set, runs before a file is copied with copy-data.
var testHookCopyData func(src string)
