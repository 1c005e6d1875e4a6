package filesystem

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/fsnotify/fsnotify"

	"github.com/wrenn-dev/wrenn/internal/envd/rpcutil"
	pb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
)

// MaxPolledEvents bounds the events a polling watcher keeps between two
// GetWatcherEvents calls; older ones are dropped.
const MaxPolledEvents = 10_000

// watch follows dir (a host path) and calls emit for each event until ctx
// ends or emit fails. ready is called once the watch is in place.
// Upload staging directories are neither followed nor reported (see
// package uploads).
func watch(ctx context.Context, env rpcutil.Env, dir string, recursive, withEntry bool, ready func() error, emit func(*pb.FilesystemEvent) error) error {
	r := env.Resolver
	st, err := os.Stat(dir)
	if err != nil {
		return fsErr("watch", r.Client(dir), err)
	}
	if !st.IsDir() {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("watch %q: not a directory", r.Client(dir)))
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENOSPC) {
			return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("create watcher: %w", err))
		}
		return connect.NewError(connect.CodeInternal, fmt.Errorf("create watcher: %w", err))
	}
	defer w.Close()
	add := func(d string) error {
		if err := w.Add(d); err != nil {
			return fmt.Errorf("watch %q: %w", r.Client(d), err)
		}
		return nil
	}
	if err := add(dir); err != nil {
		return connect.NewError(connect.CodeInternal, err)
	}
	if recursive {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() || p == dir {
				return nil // unreadable parts are skipped
			}
			if env.Uploads.IsStaging(p) {
				return filepath.SkipDir
			}
			return add(p)
		})
		if err != nil {
			return connect.NewError(connect.CodeResourceExhausted, err)
		}
	}
	// send emits one event per type on the host path p.
	send := func(p string, types []pb.EventType) error {
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			rel = p
		}
		for _, t := range types {
			fe := &pb.FilesystemEvent{Name: rel, Type: t}
			if withEntry && t != pb.EventType_EVENT_TYPE_REMOVE && t != pb.EventType_EVENT_TYPE_RENAME {
				if e, err := entryInfo(r, p); err == nil {
					fe.Entry = e
				}
			}
			if err := emit(fe); err != nil {
				return err
			}
		}
		return nil
	}
	if err := ready(); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			return connect.NewError(connect.CodeInternal, fmt.Errorf("watch %q: %w", r.Client(dir), err))
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if env.Uploads.IsStaging(ev.Name) {
				continue
			}
			if recursive && ev.Has(fsnotify.Create) {
				if st, err := os.Lstat(ev.Name); err == nil && st.IsDir() {
					add(ev.Name) // best effort: the directory may be gone again
				}
			}
			if err := send(ev.Name, eventTypes(ev.Op)); err != nil {
				return err
			}
		}
	}
}

func eventTypes(op fsnotify.Op) []pb.EventType {
	var ts []pb.EventType
	if op.Has(fsnotify.Create) {
		ts = append(ts, pb.EventType_EVENT_TYPE_CREATE)
	}
	if op.Has(fsnotify.Write) {
		ts = append(ts, pb.EventType_EVENT_TYPE_WRITE)
	}
	if op.Has(fsnotify.Remove) {
		ts = append(ts, pb.EventType_EVENT_TYPE_REMOVE)
	}
	if op.Has(fsnotify.Rename) {
		ts = append(ts, pb.EventType_EVENT_TYPE_RENAME)
	}
	if op.Has(fsnotify.Chmod) {
		ts = append(ts, pb.EventType_EVENT_TYPE_CHMOD)
	}
	return ts
}

// WatchDir implements Filesystem.WatchDir.
func (s *Service) WatchDir(ctx context.Context, req *connect.Request[pb.WatchDirRequest], stream *connect.ServerStream[pb.WatchDirResponse]) error {
	p, _, err := s.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex // Send is not safe for concurrent use
	send := func(r *pb.WatchDirResponse) error {
		mu.Lock()
		defer mu.Unlock()
		return stream.Send(r)
	}
	ready := func() error {
		if err := send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Start{Start: &pb.WatchDirResponse_StartEvent{}}}); err != nil {
			return err
		}
		go func() {
			t := time.NewTicker(rpcutil.Keepalive(req.Header()))
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					if send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Keepalive{Keepalive: &pb.WatchDirResponse_KeepAlive{}}}) != nil {
						cancel()
						return
					}
				}
			}
		}()
		return nil
	}
	return watch(ctx, s.env, p, req.Msg.GetRecursive(), req.Msg.GetIncludeEntry(), ready, func(e *pb.FilesystemEvent) error {
		return send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Filesystem{Filesystem: e}})
	})
}

type pollWatcher struct {
	cancel context.CancelFunc
	mu     sync.Mutex
	events []*pb.FilesystemEvent
	err    error
}

type watcherSet struct {
	mu sync.Mutex
	ws map[string]*pollWatcher
}

func newWatcherSet() *watcherSet { return &watcherSet{ws: map[string]*pollWatcher{}} }

// CreateWatcher implements Filesystem.CreateWatcher.
func (s *Service) CreateWatcher(ctx context.Context, req *connect.Request[pb.CreateWatcherRequest]) (*connect.Response[pb.CreateWatcherResponse], error) {
	p, _, err := s.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	var idb [12]byte
	rand.Read(idb[:])
	id := hex.EncodeToString(idb[:])
	wctx, cancel := context.WithCancel(context.Background())
	pw := &pollWatcher{cancel: cancel}
	readyc := make(chan error, 1)
	go func() {
		err := watch(wctx, s.env, p, req.Msg.GetRecursive(), req.Msg.GetIncludeEntry(),
			func() error { readyc <- nil; return nil },
			func(e *pb.FilesystemEvent) error {
				pw.mu.Lock()
				defer pw.mu.Unlock()
				if len(pw.events) >= MaxPolledEvents {
					pw.events[0] = nil
					pw.events = pw.events[1:]
				}
				pw.events = append(pw.events, e)
				return nil
			})
		select {
		case readyc <- err:
		default:
			pw.mu.Lock()
			pw.err = err
			pw.mu.Unlock()
		}
	}()
	if err := <-readyc; err != nil {
		cancel()
		return nil, err
	}
	s.watchers.mu.Lock()
	s.watchers.ws[id] = pw
	s.watchers.mu.Unlock()
	return connect.NewResponse(&pb.CreateWatcherResponse{WatcherId: id}), nil
}

func (s *Service) watcher(id string) (*pollWatcher, error) {
	s.watchers.mu.Lock()
	defer s.watchers.mu.Unlock()
	pw, ok := s.watchers.ws[id]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher %q not found", id))
	}
	return pw, nil
}

// GetWatcherEvents implements Filesystem.GetWatcherEvents.
func (s *Service) GetWatcherEvents(ctx context.Context, req *connect.Request[pb.GetWatcherEventsRequest]) (*connect.Response[pb.GetWatcherEventsResponse], error) {
	pw, err := s.watcher(req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	pw.mu.Lock()
	evs, werr := pw.events, pw.err
	pw.events = nil
	pw.mu.Unlock()
	if werr != nil && len(evs) == 0 {
		return nil, werr
	}
	return connect.NewResponse(&pb.GetWatcherEventsResponse{Events: evs}), nil
}

// RemoveWatcher implements Filesystem.RemoveWatcher.
func (s *Service) RemoveWatcher(ctx context.Context, req *connect.Request[pb.RemoveWatcherRequest]) (*connect.Response[pb.RemoveWatcherResponse], error) {
	s.watchers.mu.Lock()
	pw, ok := s.watchers.ws[req.Msg.GetWatcherId()]
	delete(s.watchers.ws, req.Msg.GetWatcherId())
	s.watchers.mu.Unlock()
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher %q not found", req.Msg.GetWatcherId()))
	}
	pw.cancel()
	return connect.NewResponse(&pb.RemoveWatcherResponse{}), nil
}

// Close stops every polling watcher.
func (s *Service) Close() {
	s.watchers.mu.Lock()
	defer s.watchers.mu.Unlock()
	for id, pw := range s.watchers.ws {
		pw.cancel()
		delete(s.watchers.ws, id)
	}
}
