package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
)

// Output bounds. They are part of envd's documented behaviour (docs/envd.md).
const (
	// ChunkSize is the largest piece of output read at once.
	ChunkSize = 32 << 10
	// ReplayBytes is how much recent output each process keeps for clients
	// that reattach with Connect. Older output is dropped.
	ReplayBytes = 1 << 20
	// SubscriberChunks is how many chunks may wait for one slow client
	// before the process's output readers block (backpressure: the process
	// then blocks on its next write).
	SubscriberChunks = 16
)

// Kind says what an Event carries.
type Kind int

// Event kinds.
const (
	Stdout Kind = iota + 1
	Stderr
	PTY
	End
)

// EndInfo describes how a process ended.
type EndInfo struct {
	ExitCode int32
	Exited   bool
	Status   string
	Error    string
}

// Event is one piece of output or the end of a process.
type Event struct {
	Seq  uint64
	Kind Kind
	Data []byte
	End  *EndInfo
}

// Config is what a process was started with, as the client gave it.
type Config struct {
	Cmd  string
	Args []string
	Envs map[string]string
	Cwd  *string
}

// Proc is a process envd started.
type Proc struct {
	PID    uint32
	Tag    string
	Config Config

	ptmx *os.File

	inMu  sync.Mutex
	stdin *os.File // nil when closed or never opened

	mu        sync.Mutex
	subs      map[*Sub]struct{}
	ring      []Event
	ringBytes int
	seq       uint64
	delivered uint64
	end       *Event
	done      chan struct{}
}

// Sub is one client following a process's events.
type Sub struct {
	C    chan Event
	gone chan struct{}
	once sync.Once
}

// Done returns a channel closed when the process has ended and its End
// event was published.
func (p *Proc) Done() <-chan struct{} { return p.done }

// IsPTY reports whether the process runs in a pseudo-terminal.
func (p *Proc) IsPTY() bool { return p.ptmx != nil }

// Subscribe starts following p. replay holds the retained output no client
// has received yet (and the End event if the process has ended); send it
// before reading s.C. withReplay=false skips it (Start's own stream).
func (p *Proc) Subscribe(withReplay bool) (s *Sub, replay []Event) {
	s = &Sub{C: make(chan Event, SubscriberChunks), gone: make(chan struct{})}
	p.mu.Lock()
	defer p.mu.Unlock()
	if withReplay {
		for _, e := range p.ring {
			if e.Seq > p.delivered {
				replay = append(replay, e)
			}
		}
	}
	if p.end != nil {
		replay = append(replay, *p.end)
		return s, replay
	}
	p.subs[s] = struct{}{}
	return s, replay
}

// Unsubscribe stops s; publishers never block on it again.
func (p *Proc) Unsubscribe(s *Sub) {
	s.once.Do(func() { close(s.gone) })
	p.mu.Lock()
	delete(p.subs, s)
	p.mu.Unlock()
}

// Delivered records that a client received the event with this sequence
// number, so a later Connect does not replay it.
func (p *Proc) Delivered(seq uint64) {
	p.mu.Lock()
	if seq > p.delivered {
		p.delivered = seq
	}
	p.mu.Unlock()
}

func (p *Proc) publish(e Event) {
	p.mu.Lock()
	p.seq++
	e.Seq = p.seq
	if e.Kind == End {
		p.end = &e
	} else {
		p.ring = append(p.ring, e)
		p.ringBytes += len(e.Data)
		for p.ringBytes > ReplayBytes && len(p.ring) > 0 {
			p.ringBytes -= len(p.ring[0].Data)
			p.ring[0] = Event{}
			p.ring = p.ring[1:]
		}
	}
	subs := make([]*Sub, 0, len(p.subs))
	for s := range p.subs {
		subs = append(subs, s)
	}
	if e.Kind == End {
		clear(p.subs)
	}
	p.mu.Unlock()
	for _, s := range subs {
		select {
		case s.C <- e:
		case <-s.gone:
		}
	}
}

// pump copies one output stream into events until EOF or error.
func (p *Proc) pump(r *os.File, kind Kind, wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		buf := make([]byte, ChunkSize)
		n, err := r.Read(buf)
		if n > 0 {
			p.publish(Event{Kind: kind, Data: buf[:n:n]})
		}
		if err != nil {
			// EOF on pipes, EIO on a PTY whose last slave closed: both end the stream.
			return
		}
	}
}

// WriteInput writes data to the process's stdin or terminal. It gives up
// when ctx ends (a process that never reads must not pin the caller).
func (p *Proc) WriteInput(ctx context.Context, data []byte) error {
	if p.ptmx != nil {
		if err := writeCtx(ctx, p.ptmx, data); err != nil {
			return fmt.Errorf("write to pty: %w", err)
		}
		return nil
	}
	p.inMu.Lock()
	defer p.inMu.Unlock()
	if p.stdin == nil {
		return ErrStdinClosed
	}
	if err := writeCtx(ctx, p.stdin, data); err != nil {
		return fmt.Errorf("write to stdin: %w", err)
	}
	return nil
}

func writeCtx(ctx context.Context, f *os.File, data []byte) error {
	// Pipes and the pty master are pollable, so a past deadline unblocks
	// a pending write.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		f.SetWriteDeadline(time.Unix(1, 0))
		close(fired)
	})
	_, err := f.Write(data)
	if !stop() {
		<-fired // its deadline must be set before we clear it
		f.SetWriteDeadline(time.Time{})
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return err
}

// ErrStdinClosed is returned when input goes to a process without stdin.
var ErrStdinClosed = errors.New("stdin is closed or was not enabled")

// CloseStdin sends EOF to the process (PTY: the terminal's EOF character).
func (p *Proc) CloseStdin() error {
	if p.ptmx != nil {
		// A terminal has no half-close: ^D is what a user would type.
		_, err := p.ptmx.Write([]byte{4})
		return err
	}
	p.inMu.Lock()
	defer p.inMu.Unlock()
	if p.stdin == nil {
		return nil
	}
	err := p.stdin.Close()
	p.stdin = nil
	return err
}

// Resize changes the terminal size.
func (p *Proc) Resize(cols, rows uint16) error {
	if p.ptmx == nil {
		return ErrNotPTY
	}
	if err := pty.Setsize(p.ptmx, &pty.Winsize{Cols: cols, Rows: rows}); err != nil {
		return fmt.Errorf("resize pty: %w", err)
	}
	return nil
}

// ErrNotPTY is returned when resizing a process without a terminal.
var ErrNotPTY = errors.New("process has no pty")

// Signal sends sig to the process group (the process and what it spawned
// without leaving the group).
func (p *Proc) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return ErrEnded
	default:
	}
	if err := syscall.Kill(-int(p.PID), sig); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return ErrEnded
		}
		return fmt.Errorf("signal %d: %w", p.PID, err)
	}
	return nil
}

// ErrEnded is returned for operations on a process that has ended.
var ErrEnded = errors.New("process has ended")
