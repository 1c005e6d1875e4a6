package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/atomicfile"
	"github.com/wrenn-dev/wrenn/sdk/go/wrenn"
)

func newSandboxCpCmd(f *userFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files and directories between this machine and a sandbox",
		Long: `Copy a file or a directory tree to or from a sandbox. The sandbox side is
written ID:PATH. A progress line is shown on a terminal.`,
		Example: `  wrenn sandbox cp ./data.csv sb-abc123:/home/user/data.csv
  wrenn sandbox cp ./src sb-abc123:/home/user/src
  wrenn sandbox cp sb-abc123:/home/user/out ./out`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcID, srcPath := splitRemote(args[0])
			dstID, dstPath := splitRemote(args[1])
			if (srcID == "") == (dstID == "") {
				return usageError{errors.New("exactly one of SRC and DST must be in a sandbox (ID:PATH)")}
			}
			progress := io.Discard
			if isTerminal(cmd.ErrOrStderr()) {
				progress = cmd.ErrOrStderr()
			}
			if srcID == "" {
				// A missing local file fails before anything is sent.
				if _, err := os.Stat(srcPath); err != nil {
					return err
				}
				c, err := f.client()
				if err != nil {
					return err
				}
				return upload(cmd.Context(), c.Sandbox(dstID).Files(), srcPath, dstPath, progress)
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			return download(cmd.Context(), c.Sandbox(srcID).Files(), srcPath, dstPath, progress)
		},
	}
}

// splitRemote splits ID:PATH; a local path (no colon before the first
// slash) has no ID.
func splitRemote(arg string) (id, p string) {
	i := strings.IndexByte(arg, ':')
	if i <= 0 || strings.Contains(arg[:i], "/") {
		return "", arg
	}
	return arg[:i], arg[i+1:]
}

func upload(ctx context.Context, files wrenn.Files, local, remote string, progress io.Writer) error {
	root, err := os.Stat(local)
	if err != nil {
		return err
	}
	if !root.IsDir() {
		if strings.HasSuffix(remote, "/") {
			remote += filepath.Base(local)
		}
		if err := ensureDir(ctx, files, path.Dir(remote)); err != nil {
			return err
		}
		return uploadFile(ctx, files, local, remote, root.Size(), progress)
	}
	return filepath.WalkDir(local, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(local, p)
		if err != nil {
			return err
		}
		target := path.Join(remote, filepath.ToSlash(rel))
		switch {
		case d.IsDir():
			return ensureDir(ctx, files, target)
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			return uploadFile(ctx, files, p, target, info.Size(), progress)
		}
		return nil // symlinks and devices are not copied
	})
}

// ensureDir makes the remote directory unless it is one already (making
// an existing directory is refused).
func ensureDir(ctx context.Context, files wrenn.Files, dir string) error {
	if _, err := files.List(ctx, dir, 1); err == nil {
		return nil
	}
	return files.MakeDir(ctx, dir)
}

func uploadFile(ctx context.Context, files wrenn.Files, local, remote string, size int64, progress io.Writer) error {
	f, err := os.Open(local)
	if err != nil {
		return err
	}
	defer f.Close()
	bar := newProgress(progress, remote, size)
	defer bar.done()
	if _, err := files.Write(ctx, remote, io.TeeReader(f, bar)); err != nil {
		return fmt.Errorf("upload %s to %s: %w", local, remote, err)
	}
	return nil
}

func download(ctx context.Context, files wrenn.Files, remote, local string, progress io.Writer) error {
	entries, listErr := files.List(ctx, remote, 1)
	if listErr != nil {
		// Not a directory: a file (or the read's error says why not).
		if st, err := os.Stat(local); err == nil && st.IsDir() {
			local = filepath.Join(local, path.Base(remote))
		}
		return downloadFile(ctx, files, remote, local, -1, progress)
	}
	if err := os.MkdirAll(local, 0o755); err != nil {
		return err
	}
	for _, e := range entries {
		target := filepath.Join(local, filepath.FromSlash(e.Name))
		switch e.Type {
		case "dir":
			if err := download(ctx, files, e.Path, target, progress); err != nil {
				return err
			}
		case "file":
			size := int64(-1)
			if e.Size != nil {
				size = int64(*e.Size)
			}
			if err := downloadFile(ctx, files, e.Path, target, size, progress); err != nil {
				return err
			}
		}
	}
	return nil
}

// downloadFile writes the remote file to local atomically: a cut transfer
// leaves no partial file.
func downloadFile(ctx context.Context, files wrenn.Files, remote, local string, size int64, progress io.Writer) error {
	rc, err := files.Read(ctx, remote)
	if err != nil {
		return err
	}
	defer rc.Close()
	out, err := atomicfile.New(local, 0o644)
	if err != nil {
		return err
	}
	defer out.Abort()
	bar := newProgress(progress, remote, size)
	defer bar.done()
	if _, err := io.Copy(io.MultiWriter(out, bar), rc); err != nil {
		return fmt.Errorf("download %s: %w", remote, err)
	}
	return out.Commit()
}

// progress is a one-line byte counter redrawn at most 10 times a second.
type progress struct {
	w     io.Writer
	name  string
	total int64
	n     int64
	last  time.Time
}

func newProgress(w io.Writer, name string, total int64) *progress {
	return &progress{w: w, name: name, total: total}
}

func (p *progress) Write(b []byte) (int, error) {
	p.n += int64(len(b))
	if time.Since(p.last) > 100*time.Millisecond {
		p.draw()
	}
	return len(b), nil
}

func (p *progress) draw() {
	p.last = time.Now()
	const mib = 1 << 20
	if p.total > 0 {
		fmt.Fprintf(p.w, "\r%s  %.1f/%.1f MiB  %3d%%", p.name, float64(p.n)/mib, float64(p.total)/mib, p.n*100/p.total)
		return
	}
	fmt.Fprintf(p.w, "\r%s  %.1f MiB", p.name, float64(p.n)/mib)
}

func (p *progress) done() {
	if p.w == io.Discard {
		return
	}
	p.draw()
	fmt.Fprintln(p.w)
}
