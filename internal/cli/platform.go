package cli

import (
	"archive/tar"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/sdk/go/wrenn"
)

func groupCmd(use, short, example string, aliases []string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: short, Example: example, Aliases: aliases, Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() }}
	cmd.AddCommand(subs...)
	return cmd
}

func newSnapshotCmd(f *userFlags) *cobra.Command {
	var name string
	create := &cobra.Command{
		Use:     "create SANDBOX_ID --name NAME",
		Short:   "Save a sandbox as a snapshot that new sandboxes start from",
		Example: `  wrenn snapshot create sb-abc123 --name with-deps && wrenn sandbox create --template with-deps`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			s, err := c.CreateSnapshot(cmd.Context(), args[0], name)
			if err != nil {
				return err
			}
			return f.print(cmd.OutOrStdout(), s, snapshotHeader, [][]string{snapshotRow(*s)})
		},
	}
	create.Flags().StringVar(&name, "name", "", "the snapshot's name (required)")
	_ = create.MarkFlagRequired("name")
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List the team's snapshots", Example: `  wrenn snapshot list -o json`, Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			ss, err := c.ListSnapshots(cmd.Context())
			if err != nil {
				return err
			}
			rows := make([][]string, len(ss))
			for i, s := range ss {
				rows[i] = snapshotRow(s)
			}
			return f.print(cmd.OutOrStdout(), ss, snapshotHeader, rows)
		},
	}
	rm := &cobra.Command{
		Use: "rm NAME...", Short: "Delete snapshots", Example: `  wrenn snapshot rm with-deps`, Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			for _, n := range args {
				if err := c.DeleteSnapshot(cmd.Context(), n); err != nil {
					return fmt.Errorf("delete snapshot %s: %w", n, err)
				}
			}
			return nil
		},
	}
	return groupCmd("snapshot", "Save sandboxes as snapshots, list and delete them",
		"  wrenn snapshot create sb-abc123 --name with-deps\n  wrenn snapshot list\n  wrenn snapshot rm with-deps", []string{"snapshots"}, create, list, rm)
}

var snapshotHeader = []string{"NAME", "ID", "VCPUS", "MEMORY", "SIZE", "CREATED"}

func snapshotRow(s wrenn.Snapshot) []string {
	return []string{s.Name, s.Id, strconv.Itoa(s.Vcpus), fmt.Sprintf("%d MiB", s.MemoryMb), fmt.Sprintf("%.1f MiB", float64(s.SizeBytes)/(1<<20)), s.CreatedAt.Local().Format(time.DateTime)}
}

func newTemplateCmd(f *userFlags) *cobra.Command {
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List the templates sandboxes can start from", Example: `  wrenn template list`, Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			ts, err := c.ListTemplates(cmd.Context())
			if err != nil {
				return err
			}
			rows := make([][]string, len(ts))
			for i, t := range ts {
				rows[i] = []string{t.Name, string(t.Kind), string(t.Scope), strconv.Itoa(t.Vcpus), fmt.Sprintf("%d MiB", t.MemoryMb), fmt.Sprintf("%d MiB", t.DiskMb)}
			}
			return f.print(cmd.OutOrStdout(), ts, []string{"NAME", "KIND", "SCOPE", "VCPUS", "MEMORY", "DISK"}, rows)
		},
	}
	return groupCmd("template", "List templates and build new ones from recipes",
		"  wrenn template list\n  wrenn template build --name app -f recipe.txt --archive ./files", []string{"templates"}, list, newTemplateBuildCmd(f))
}

func newTemplateBuildCmd(f *userFlags) *cobra.Command {
	var (
		req             wrenn.BuildRequest
		recipe, archive string
		base            string
		vcpus, memory   int
	)
	cmd := &cobra.Command{
		Use:   "build --name NAME -f RECIPE [--archive DIR|FILE]",
		Short: "Build a template from a recipe, following its steps live",
		Long: `Build a template from a recipe file (one step per line; see docs/templates.md)
and follow the build: each step as it starts and ends, and its output. With
--archive, a directory (sent as tar.gz) or a tar, tar.gz or zip file is what
COPY steps read. Platform admins only; needs a session (wrenn login --email).
Exits non-zero when the build does not succeed.`,
		Example: `  wrenn template build --name app -f recipe.txt
  wrenn template build --name web -f recipe.txt --archive ./site --base minimal`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			text, err := os.ReadFile(recipe)
			if err != nil {
				return fmt.Errorf("read the recipe: %w", err)
			}
			req.RecipeText = ptrTo(string(text))
			if base != "" {
				req.BaseTemplate = &base
			}
			if vcpus > 0 {
				req.Vcpus = &vcpus
			}
			if memory > 0 {
				req.MemoryMb = &memory
			}
			var body io.Reader
			if archive != "" {
				rc, err := openArchive(archive)
				if err != nil {
					return err
				}
				defer rc.Close()
				body = rc
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			b, err := c.SubmitBuild(cmd.Context(), req, body)
			if err != nil {
				return err
			}
			return followBuild(cmd, f, c, b)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&req.Name, "name", "", "the template's name (required)")
	fl.StringVarP(&recipe, "file", "f", "", "the recipe file (required)")
	fl.StringVar(&archive, "archive", "", "a directory or a tar/tar.gz/zip file for COPY steps")
	fl.StringVar(&base, "base", "", "the template to build on (default minimal)")
	fl.IntVar(&vcpus, "vcpus", 0, "the template's default vCPUs")
	fl.IntVar(&memory, "memory", 0, "the template's default memory in MiB")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

func ptrTo[T any](v T) *T { return &v }

// followBuild prints a build's steps and output until it ends; with
// --output json it prints the finished build instead.
func followBuild(cmd *cobra.Command, f *userFlags, c *wrenn.Client, b *wrenn.Build) error {
	out, log := cmd.OutOrStdout(), cmd.ErrOrStderr()
	if f.output == "json" {
		out = io.Discard
	}
	fmt.Fprintf(log, "Build %s of template %s queued.\n", b.Id, b.Name)
	total := len(b.Recipe)
	err := c.FollowBuild(cmd.Context(), b.Id, func(ev wrenn.BuildEvent) error {
		switch ev.Type {
		case "build":
			total = ev.Build.Progress.Total
		case "step":
			if ev.Step == nil {
				return nil
			}
			switch ev.Step.Status {
			case "running":
				fmt.Fprintf(log, "[%d/%d] %s\n", ev.Step.Index+1, total, ev.Step.Cmd)
			case "failed":
				msg := ""
				if ev.Step.Error != nil {
					msg = ": " + *ev.Step.Error
				}
				fmt.Fprintf(log, "[%d/%d] failed%s\n", ev.Step.Index+1, total, msg)
			}
		case "output":
			fmt.Fprint(out, ev.Data)
		case "end":
			fmt.Fprintf(log, "Build %s %s.\n", b.Id, ev.Status)
		}
		return nil
	})
	if err != nil {
		return err
	}
	final, err := c.GetBuild(cmd.Context(), b.Id)
	if err != nil {
		return err
	}
	if f.output == "json" {
		if err := f.print(cmd.OutOrStdout(), final, nil, nil); err != nil {
			return err
		}
	}
	if final.Status != "succeeded" {
		msg := string(final.Status)
		if final.Error != nil {
			msg += ": " + *final.Error
		}
		return fmt.Errorf("the build of %s %s", final.Name, msg)
	}
	return nil
}

// openArchive is a file as it is, or a directory streamed as tar.gz.
func openArchive(p string) (io.ReadCloser, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("the archive: %w", err)
	}
	if !st.IsDir() {
		return os.Open(p)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(tarGz(pw, p)) }()
	return pr, nil
}

func tarGz(w io.Writer, dir string) error {
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if !info.Mode().IsRegular() && !info.IsDir() {
			return nil
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.IsDir() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return fmt.Errorf("pack %s: %w", dir, err)
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return gz.Close()
}

func newKeysCmd(f *userFlags) *cobra.Command {
	create := &cobra.Command{
		Use: "create NAME", Short: "Create a team API key (shown once)", Example: `  wrenn keys create ci`, Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			k, err := c.CreateAPIKey(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return f.print(cmd.OutOrStdout(), k, []string{"ID", "NAME", "KEY"}, [][]string{{k.Id, k.Name, k.Key}})
		},
	}
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List the team's API keys", Example: `  wrenn keys list`, Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			ks, err := c.ListAPIKeys(cmd.Context())
			if err != nil {
				return err
			}
			rows := make([][]string, len(ks))
			for i, k := range ks {
				used := "never"
				if k.LastUsedAt != nil {
					used = k.LastUsedAt.Local().Format(time.DateTime)
				}
				rows[i] = []string{k.Id, k.Name, k.Prefix, k.CreatedAt.Local().Format(time.DateTime), used}
			}
			return f.print(cmd.OutOrStdout(), ks, []string{"ID", "NAME", "PREFIX", "CREATED", "LAST USED"}, rows)
		},
	}
	revoke := &cobra.Command{
		Use: "revoke ID...", Short: "Revoke API keys (they stop working at once)", Example: `  wrenn keys revoke key-abc123`, Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			for _, id := range args {
				if err := c.RevokeAPIKey(cmd.Context(), id); err != nil {
					return fmt.Errorf("revoke %s: %w", id, err)
				}
			}
			return nil
		},
	}
	return groupCmd("keys", "Create, list and revoke team API keys (needs a session)",
		"  wrenn keys create ci\n  wrenn keys list\n  wrenn keys revoke key-abc123", []string{"key", "api-keys"}, create, list, revoke)
}
