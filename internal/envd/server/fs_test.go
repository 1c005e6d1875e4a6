package server

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	fspb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
)

func TestFilesystemRPCs(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := ctxT(t, 30*time.Second)
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "f.txt"), []byte("12345"), 0o640))
	must(os.Symlink("f.txt", filepath.Join(dir, "link")))
	// Links are outside the listed directory so the listing below keeps its names.
	links := t.TempDir()
	must(os.Symlink(filepath.Join(dir, "link"), filepath.Join(links, "chain")))
	must(os.Mkdir(filepath.Join(links, "d"), 0o750))
	must(os.Chmod(filepath.Join(links, "d"), 0o750))
	must(os.Symlink("d", filepath.Join(links, "dirlink")))
	must(os.Symlink("nowhere", filepath.Join(links, "dangling")))
	must(os.Symlink("loop", filepath.Join(links, "loop")))

	t.Run("stat", func(t *testing.T) {
		tests := []struct {
			path     string
			wantType fspb.FileType
			wantSize int64
			wantCode connect.Code
		}{
			{filepath.Join(dir, "f.txt"), fspb.FileType_FILE_TYPE_FILE, 5, 0},
			{dir, fspb.FileType_FILE_TYPE_DIRECTORY, -1, 0},
			{filepath.Join(dir, "link"), fspb.FileType_FILE_TYPE_FILE, 5, 0},
			{filepath.Join(dir, "missing"), 0, 0, connect.CodeNotFound},
			{filepath.Join(dir, "f.txt", "below-a-file"), 0, 0, connect.CodeInvalidArgument},
			{"", 0, 0, connect.CodeInvalidArgument},
			{"a\x00b", 0, 0, connect.CodeInvalidArgument},
		}
		for _, tc := range tests {
			res, err := e.fs.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: tc.path}))
			if codeOf(err) != tc.wantCode {
				t.Errorf("stat %q: %v, want %v", tc.path, err, tc.wantCode)
				continue
			}
			if err != nil {
				continue
			}
			en := res.Msg.Entry
			if en.Type != tc.wantType || (tc.wantSize >= 0 && en.Size != tc.wantSize) || en.Path != tc.path || en.Name != filepath.Base(tc.path) {
				t.Errorf("stat %q = %v", tc.path, en)
			}
			if en.Owner == "" || en.Group == "" || en.ModifiedTime == nil || en.Permissions == "" {
				t.Errorf("stat %q lacks owner/group/time/permissions: %v", tc.path, en)
			}
		}
		// A link is described by what it resolves to, with the resolved
		// absolute path as its target; a dangling one (or a loop) as a link.
		for _, tc := range []struct {
			link, wantTarget string
			wantType         fspb.FileType
			wantMode         uint32
		}{
			{filepath.Join(dir, "link"), filepath.Join(dir, "f.txt"), fspb.FileType_FILE_TYPE_FILE, 0o640},
			{filepath.Join(links, "chain"), filepath.Join(dir, "f.txt"), fspb.FileType_FILE_TYPE_FILE, 0o640},
			{filepath.Join(links, "dirlink"), filepath.Join(links, "d"), fspb.FileType_FILE_TYPE_DIRECTORY, 0o750},
			{filepath.Join(links, "dangling"), filepath.Join(links, "nowhere"), fspb.FileType_FILE_TYPE_SYMLINK, 0o777},
			{filepath.Join(links, "loop"), filepath.Join(links, "loop"), fspb.FileType_FILE_TYPE_SYMLINK, 0o777},
		} {
			res, err := e.fs.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: tc.link}))
			if err != nil {
				t.Errorf("stat %s: %v", tc.link, err)
				continue
			}
			en := res.Msg.Entry
			if en.GetSymlinkTarget() != tc.wantTarget || en.Type != tc.wantType || en.Mode != tc.wantMode || en.Path != tc.link {
				t.Errorf("stat %s = target %q type %v mode %o path %q, want %q %v %o", tc.link, en.GetSymlinkTarget(), en.Type, en.Mode, en.Path, tc.wantTarget, tc.wantType, tc.wantMode)
			}
		}
		res, _ := e.fs.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: filepath.Join(dir, "f.txt")}))
		if res.Msg.Entry.Mode != 0o640 || res.Msg.Entry.Permissions != "-rw-r-----" {
			t.Errorf("mode %o permissions %q", res.Msg.Entry.Mode, res.Msg.Entry.Permissions)
		}
	})

	t.Run("makedir", func(t *testing.T) {
		p := filepath.Join(dir, "a", "b", "c")
		res, err := e.fs.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: p}))
		if err != nil || res.Msg.Entry.Type != fspb.FileType_FILE_TYPE_DIRECTORY {
			t.Fatalf("makedir: %v %v", res, err)
		}
		if _, err := e.fs.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: p})); codeOf(err) != connect.CodeAlreadyExists {
			t.Errorf("makedir again: %v, want AlreadyExists", err)
		}
		if _, err := e.fs.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: filepath.Join(dir, "f.txt", "x")})); codeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("makedir below a file: %v, want InvalidArgument", err)
		}
	})

	t.Run("listdir", func(t *testing.T) {
		names := func(d uint32) []string {
			res, err := e.fs.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: dir, Depth: d}))
			if err != nil {
				t.Fatalf("list depth %d: %v", d, err)
			}
			var out []string
			for _, en := range res.Msg.Entries {
				rel, _ := filepath.Rel(dir, en.Path)
				out = append(out, rel)
			}
			slices.Sort(out)
			return out
		}
		tests := []struct {
			depth uint32
			want  []string
		}{
			{0, []string{"a", "f.txt", "link"}},
			{1, []string{"a", "f.txt", "link"}},
			{2, []string{"a", "a/b", "f.txt", "link"}},
			{5, []string{"a", "a/b", "a/b/c", "f.txt", "link"}},
		}
		for _, tc := range tests {
			if got := names(tc.depth); !slices.Equal(got, tc.want) {
				t.Errorf("depth %d: %v, want %v", tc.depth, got, tc.want)
			}
		}
		if _, err := e.fs.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: filepath.Join(dir, "f.txt")})); codeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("list a file: %v", err)
		}
		if _, err := e.fs.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: filepath.Join(dir, "nope")})); codeOf(err) != connect.CodeNotFound {
			t.Errorf("list missing: %v", err)
		}
	})

	t.Run("move", func(t *testing.T) {
		src, dst := filepath.Join(dir, "f.txt"), filepath.Join(dir, "new", "parent", "g.txt")
		res, err := e.fs.Move(ctx, connect.NewRequest(&fspb.MoveRequest{Source: src, Destination: dst}))
		if err != nil || res.Msg.Entry.Path != dst || res.Msg.Entry.Size != 5 {
			t.Fatalf("move: %v %v", res, err)
		}
		if _, err := os.Stat(src); !os.IsNotExist(err) {
			t.Errorf("source still there: %v", err)
		}
		if _, err := e.fs.Move(ctx, connect.NewRequest(&fspb.MoveRequest{Source: src, Destination: dst})); codeOf(err) != connect.CodeNotFound {
			t.Errorf("move missing: %v", err)
		}
	})

	t.Run("remove", func(t *testing.T) {
		must(os.WriteFile(filepath.Join(dir, "plain"), nil, 0o644))
		tests := []struct {
			name     string
			path     string
			wantCode connect.Code
		}{
			{"a directory tree", filepath.Join(dir, "a"), 0},
			{"the same path again (already gone)", filepath.Join(dir, "a"), 0},
			{"a path that never existed", filepath.Join(dir, "never", "was"), 0},
			{"below a file", filepath.Join(dir, "plain", "x"), connect.CodeInvalidArgument},
			{"a file", filepath.Join(dir, "plain"), 0},
			{"an empty path", "", connect.CodeInvalidArgument},
		}
		for _, tc := range tests {
			_, err := e.fs.Remove(ctx, connect.NewRequest(&fspb.RemoveRequest{Path: tc.path}))
			if codeOf(err) != tc.wantCode {
				t.Errorf("remove %s: %v, want %v", tc.name, err, tc.wantCode)
				continue
			}
			if _, serr := os.Lstat(tc.path); err == nil && !os.IsNotExist(serr) {
				t.Errorf("remove %s: still there: %v", tc.name, serr)
			}
		}
	})
}

func TestRootAndRelativePaths(t *testing.T) {
	root := t.TempDir()
	e := newEnv(t, Config{Root: root})
	ctx := ctxT(t, 10*time.Second)
	res, err := e.fs.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: "/x/../../../etc/y"}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.Entry.Path != "/etc/y" {
		t.Errorf("client path = %q", res.Msg.Entry.Path)
	}
	if _, err := os.Stat(filepath.Join(root, "etc", "y")); err != nil {
		t.Errorf("not created inside root: %v", err)
	}
	// A relative path is taken from the user's home (root's, as the test runs).
	home, _ := os.UserHomeDir()
	if _, err := e.fs.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: "rel/dir"})); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, home, "rel", "dir")); err != nil {
		t.Errorf("relative path not under home: %v", err)
	}
}

func TestWatchDir(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := ctxT(t, 30*time.Second)
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(filepath.Join(dir, "sub"), 0o755))
	for _, recursive := range []bool{false, true} {
		name := map[bool]string{false: "flat", true: "recursive"}[recursive]
		t.Run(name, func(t *testing.T) {
			st, err := e.fs.WatchDir(ctx, connect.NewRequest(&fspb.WatchDirRequest{Path: dir, Recursive: recursive, IncludeEntry: true}))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if !st.Receive() || st.Msg().GetStart() == nil {
				t.Fatalf("first event is not start: %v %v", st.Msg(), st.Err())
			}
			type ev struct {
				name string
				typ  fspb.EventType
			}
			evc := make(chan ev, 100)
			go func() {
				for st.Receive() {
					if f := st.Msg().GetFilesystem(); f != nil {
						// The sentinel stays, so its entry must be there (others may be gone already).
						if f.Type == fspb.EventType_EVENT_TYPE_CREATE && f.Entry == nil && strings.HasPrefix(f.Name, "end-") {
							evc <- ev{"MISSING ENTRY " + f.Name, 0}
						}
						evc <- ev{f.Name, f.Type}
					}
				}
				close(evc)
			}()
			base := "f-" + name
			p := filepath.Join(dir, base)
			f, err := os.Create(p)
			must(err)
			f.WriteString("data")
			f.Close()
			must(os.Rename(p, p+".moved"))
			must(os.Remove(p + ".moved"))
			want := []ev{
				{base, fspb.EventType_EVENT_TYPE_CREATE},
				{base, fspb.EventType_EVENT_TYPE_WRITE},
				{base, fspb.EventType_EVENT_TYPE_RENAME},
				{base + ".moved", fspb.EventType_EVENT_TYPE_CREATE},
				{base + ".moved", fspb.EventType_EVENT_TYPE_REMOVE},
			}
			inSub := filepath.Join("sub", "deep-"+name)
			must(os.WriteFile(filepath.Join(dir, inSub), nil, 0o644))
			if recursive {
				want = append(want, ev{inSub, fspb.EventType_EVENT_TYPE_CREATE})
			}
			// A sentinel marks the end of what we did.
			must(os.WriteFile(filepath.Join(dir, "end-"+name), nil, 0o644))
			want = append(want, ev{"end-" + name, fspb.EventType_EVENT_TYPE_CREATE})
			var got []ev
			timeout := time.After(10 * time.Second)
		loop:
			for {
				select {
				case x, ok := <-evc:
					if !ok {
						t.Fatalf("stream ended: %v", st.Err())
					}
					got = append(got, x)
					if x.name == "end-"+name {
						break loop
					}
				case <-timeout:
					t.Fatalf("timeout; got %v", got)
				}
			}
			// Every wanted event, in order (chmod and extra writes may be interleaved).
			i := 0
			for _, g := range got {
				if i < len(want) && g == want[i] {
					i++
				}
				if !recursive && g.name == inSub {
					t.Errorf("flat watch reported %q", g.name)
				}
				if len(g.name) > 14 && g.name[:14] == "MISSING ENTRY " {
					t.Errorf("create event without entry: %s", g.name)
				}
			}
			if i != len(want) {
				t.Errorf("events %v\nwant in order %v", got, want)
			}
		})
	}
	t.Run("errors", func(t *testing.T) {
		for _, p := range []string{filepath.Join(dir, "missing"), filepath.Join(dir, "end-flat")} {
			st, err := e.fs.WatchDir(ctx, connect.NewRequest(&fspb.WatchDirRequest{Path: p}))
			if err == nil {
				for st.Receive() {
				}
				err = st.Err()
			}
			if c := codeOf(err); c != connect.CodeNotFound && c != connect.CodeInvalidArgument {
				t.Errorf("watch %q: %v", p, err)
			}
		}
	})
}

func TestPollingWatcher(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := ctxT(t, 30*time.Second)
	dir := t.TempDir()
	cw, err := e.fs.CreateWatcher(ctx, connect.NewRequest(&fspb.CreateWatcherRequest{Path: dir}))
	if err != nil {
		t.Fatal(err)
	}
	id := cw.Msg.WatcherId
	os.WriteFile(filepath.Join(dir, "x"), []byte("1"), 0o644)
	var names []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && len(names) == 0; time.Sleep(20 * time.Millisecond) {
		res, err := e.fs.GetWatcherEvents(ctx, connect.NewRequest(&fspb.GetWatcherEventsRequest{WatcherId: id}))
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range res.Msg.Events {
			names = append(names, ev.Name)
		}
	}
	if len(names) == 0 || names[0] != "x" {
		t.Fatalf("events %v", names)
	}
	if _, err := e.fs.RemoveWatcher(ctx, connect.NewRequest(&fspb.RemoveWatcherRequest{WatcherId: id})); err != nil {
		t.Fatal(err)
	}
	if _, err := e.fs.GetWatcherEvents(ctx, connect.NewRequest(&fspb.GetWatcherEventsRequest{WatcherId: id})); codeOf(err) != connect.CodeNotFound {
		t.Errorf("after remove: %v", err)
	}
	if _, err := e.fs.CreateWatcher(ctx, connect.NewRequest(&fspb.CreateWatcherRequest{Path: filepath.Join(dir, "nope")})); codeOf(err) != connect.CodeNotFound {
		t.Errorf("watch missing: %v", err)
	}
}
