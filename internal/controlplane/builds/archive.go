package builds

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
)

// Archive bounds: what one upload may unpack to, so a small compressed
// upload cannot expand without end.
const (
	MaxArchiveEntries  = 10000
	MaxArchiveUnpacked = 1 << 30
)

// Archive formats.
const (
	FormatTar   = "tar"
	FormatTarGz = "tar.gz"
	FormatZip   = "zip"
)

// ArchiveError is a refused upload (400).
type ArchiveError struct{ Msg string }

func (e *ArchiveError) Error() string { return "archive: " + e.Msg }

func archiveErr(format string, args ...any) error {
	return &ArchiveError{Msg: fmt.Sprintf(format, args...)}
}

// ArchiveFile is one regular file of an archive, by its cleaned path.
type ArchiveFile struct {
	Path string
	Mode fs.FileMode
	Open func() (io.ReadCloser, error)
}

// DetectFormat names an archive's format by its first bytes.
func DetectFormat(data []byte) (string, error) {
	switch {
	case bytes.HasPrefix(data, []byte{0x1f, 0x8b}):
		return FormatTarGz, nil
	case bytes.HasPrefix(data, []byte("PK\x03\x04")), bytes.HasPrefix(data, []byte("PK\x05\x06")):
		return FormatZip, nil
	case len(data) >= 262 && string(data[257:262]) == "ustar":
		return FormatTar, nil
	}
	return "", archiveErr("not a tar, tar.gz or zip file")
}

// checkEntry refuses paths that leave the archive's root and entries that
// are neither files nor directories (links could point outside it).
func checkEntry(name string, mode fs.FileMode, seen *int) (string, error) {
	*seen++
	if *seen > MaxArchiveEntries {
		return "", archiveErr("more than %d entries", MaxArchiveEntries)
	}
	clean, ok := CleanArchivePath(strings.TrimPrefix(name, "./"))
	if !ok && name != "./" {
		return "", archiveErr("entry %q leaves the archive's root", name)
	}
	if !mode.IsRegular() && !mode.IsDir() {
		return "", archiveErr("entry %q is not a file or directory (links and devices are not supported)", name)
	}
	return clean, nil
}

// Files checks a whole archive and returns its regular files. Every entry
// is read once here, so a corrupt or oversized archive is refused at upload.
func Files(format string, data []byte) ([]ArchiveFile, error) {
	var (
		out   []ArchiveFile
		seen  int
		total int64
	)
	count := func(n int64) error {
		if total += n; total > MaxArchiveUnpacked {
			return archiveErr("unpacks to more than %d bytes", int64(MaxArchiveUnpacked))
		}
		return nil
	}
	switch format {
	case FormatTar, FormatTarGz:
		var r io.Reader = bytes.NewReader(data)
		if format == FormatTarGz {
			gz, err := gzip.NewReader(r)
			if err != nil {
				return nil, archiveErr("bad gzip data: %v", err)
			}
			r = gz
		}
		tr := tar.NewReader(r)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, archiveErr("bad tar data: %v", err)
			}
			if h.Typeflag == tar.TypeXGlobalHeader {
				continue
			}
			p, err := checkEntry(h.Name, h.FileInfo().Mode(), &seen)
			if err != nil {
				return nil, err
			}
			if h.Typeflag != tar.TypeReg {
				continue
			}
			if err := count(h.Size); err != nil {
				return nil, err
			}
			body, err := io.ReadAll(io.LimitReader(tr, h.Size))
			if err != nil {
				return nil, archiveErr("bad tar data: %v", err)
			}
			out = append(out, ArchiveFile{Path: p, Mode: h.FileInfo().Mode().Perm(), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }})
		}
	case FormatZip:
		zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return nil, archiveErr("bad zip data: %v", err)
		}
		for _, f := range zr.File {
			p, err := checkEntry(f.Name, f.Mode(), &seen)
			if err != nil {
				return nil, err
			}
			if f.Mode().IsDir() {
				continue
			}
			if err := count(int64(f.UncompressedSize64)); err != nil {
				return nil, err
			}
			out = append(out, ArchiveFile{Path: p, Mode: f.Mode().Perm(), Open: f.Open})
		}
	default:
		return nil, archiveErr("unknown format %q", format)
	}
	return out, nil
}

// Select returns the files COPY src takes and where each goes under dst:
// src itself when it is a file (dst is then the file's path), or every
// file below src when it is a directory ("." is the whole archive).
func Select(files []ArchiveFile, src, dst string) (map[string]ArchiveFile, error) {
	out := map[string]ArchiveFile{}
	for _, f := range files {
		switch {
		case f.Path == src:
			out[dst] = f
		case src == ".":
			out[path.Join(dst, f.Path)] = f
		case strings.HasPrefix(f.Path, src+"/"):
			out[path.Join(dst, strings.TrimPrefix(f.Path, src+"/"))] = f
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("COPY %s: no such file or directory in the archive", src)
	}
	return out, nil
}
