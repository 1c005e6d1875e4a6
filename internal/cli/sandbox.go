package cli

import (
	"context"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/sdk/go/wrenn"
)

func newSandboxCmd(f *userFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "sandbox",
		Aliases: []string{"sandboxes", "sb"},
		Short:   "Create, list, run commands in and copy files to and from sandboxes",
		Example: `  id=$(wrenn sandbox create -o json | jq -r .id)
  wrenn sandbox exec $id -- uname -a
  wrenn sandbox shell $id
  wrenn sandbox rm $id`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newSandboxCreateCmd(f), newSandboxListCmd(f), newSandboxGetCmd(f), newSandboxRmCmd(f),
		newSandboxStateCmd(f, "pause", "Pause sandboxes (memory snapshot; resume later)", (*wrenn.Sandbox).Pause),
		newSandboxStateCmd(f, "resume", "Resume paused sandboxes", func(s *wrenn.Sandbox, ctx context.Context) error { return s.Resume(ctx, 0) }),
		newSandboxExecCmd(f), newSandboxShellCmd(f), newSandboxCpCmd(f))
	return cmd
}

var sandboxHeader = []string{"ID", "STATUS", "TEMPLATE", "VCPUS", "MEMORY", "CREATED"}

func sandboxRow(s *wrenn.Sandbox) []string {
	return []string{s.Id, string(s.Status), s.Template, strconv.Itoa(s.Vcpus), fmt.Sprintf("%d MiB", s.MemoryMb), s.CreatedAt.Local().Format(time.DateTime)}
}

func (f *userFlags) printSandboxes(cmd *cobra.Command, v any, sbs ...*wrenn.Sandbox) error {
	rows := make([][]string, len(sbs))
	for i, s := range sbs {
		rows[i] = sandboxRow(s)
	}
	return f.print(cmd.OutOrStdout(), v, sandboxHeader, rows)
}

func newSandboxCreateCmd(f *userFlags) *cobra.Command {
	var (
		opts     wrenn.CreateOptions
		metadata []string
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a sandbox and wait until it runs",
		Example: `  wrenn sandbox create
  wrenn sandbox create --template python --vcpus 2 --memory 1024 --timeout 10m --metadata owner=ci
  id=$(wrenn sandbox create -o json | jq -r .id)`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			md, err := parsePairs("--metadata", metadata)
			if err != nil {
				return err
			}
			opts.Metadata = md
			if cmd.Flags().Changed("timeout") && opts.Timeout == 0 {
				opts.Timeout = wrenn.NoTimeout
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			sb, err := c.CreateSandbox(cmd.Context(), opts)
			if err != nil {
				return err
			}
			return f.printSandboxes(cmd, sb.Sandbox, sb)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Template, "template", "", "template or snapshot to start from (default: the platform's)")
	fl.IntVar(&opts.VCPUs, "vcpus", 0, "virtual CPUs (default: the template's)")
	fl.IntVar(&opts.MemoryMB, "memory", 0, "memory in MiB (default: the template's)")
	fl.DurationVar(&opts.Timeout, "timeout", 0, "idle time before the sandbox is paused, e.g. 10m (0: never; default: the platform's)")
	fl.StringArrayVar(&metadata, "metadata", nil, "metadata key=value (repeatable)")
	return cmd
}

// parsePairs parses repeated key=value flags.
func parsePairs(flag string, pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, usageError{fmt.Errorf("%s %q: want key=value", flag, p)}
		}
		m[k] = v
	}
	return m, nil
}

func newSandboxListCmd(f *userFlags) *cobra.Command {
	var (
		opts     wrenn.ListOptions
		metadata []string
	)
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the team's sandboxes",
		Example: `  wrenn sandbox list
  wrenn sandbox list --status running,paused --metadata owner=ci -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			md, err := parsePairs("--metadata", metadata)
			if err != nil {
				return err
			}
			opts.Metadata = md
			c, err := f.client()
			if err != nil {
				return err
			}
			sbs, err := c.ListSandboxes(cmd.Context(), opts)
			if err != nil {
				return err
			}
			models := make([]any, len(sbs))
			for i, s := range sbs {
				models[i] = s.Sandbox
			}
			return f.printSandboxes(cmd, models, sbs...)
		},
	}
	cmd.Flags().StringSliceVar(&opts.Statuses, "status", nil, "statuses to list, e.g. running,paused (default: the API's)")
	cmd.Flags().StringArrayVar(&metadata, "metadata", nil, "only sandboxes with metadata key=value (repeatable)")
	return cmd
}

func newSandboxGetCmd(f *userFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "get ID",
		Short:   "Show a sandbox",
		Example: `  wrenn sandbox get sb-abc123 -o json`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			sb, err := c.GetSandbox(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return f.printSandboxes(cmd, sb.Sandbox, sb)
		},
	}
}

func newSandboxRmCmd(f *userFlags) *cobra.Command {
	return newSandboxStateCmd(f, "rm", "Destroy sandboxes (their disks are deleted)", (*wrenn.Sandbox).Destroy)
}

// newSandboxStateCmd is a command that applies op to each sandbox named.
func newSandboxStateCmd(f *userFlags, use, short string, op func(*wrenn.Sandbox, context.Context) error) *cobra.Command {
	return &cobra.Command{
		Use:     use + " ID...",
		Short:   short,
		Example: fmt.Sprintf("  wrenn sandbox %s sb-abc123 sb-def456", use),
		Args:    minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			var done []*wrenn.Sandbox
			for _, id := range args {
				sb := c.Sandbox(id)
				if err := op(sb, cmd.Context()); err != nil {
					return fmt.Errorf("%s %s: %w", use, id, err)
				}
				done = append(done, sb)
			}
			models := make([]any, len(done))
			for i, s := range done {
				models[i] = s.Sandbox
			}
			return f.printSandboxes(cmd, models, done...)
		},
	}
}

func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s takes %d argument(s), got %d", cmd.CommandPath(), n, len(args))}
		}
		return nil
	}
}

func minArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return usageError{fmt.Errorf("%s needs at least %d argument(s)", cmd.CommandPath(), n)}
		}
		return nil
	}
}

func newSandboxExecCmd(f *userFlags) *cobra.Command {
	var (
		opts    wrenn.ExecOptions
		env     []string
		stdin   bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "exec ID -- CMD [ARGS...]",
		Short: "Run a command in a sandbox, streaming its output; exits with the command's exit code",
		Example: `  wrenn sandbox exec sb-abc123 -- uname -a
  wrenn sandbox exec sb-abc123 --cwd /tmp --env A=1 -- sh -c 'echo $A; exit 3'; echo $?
  echo data | wrenn sandbox exec sb-abc123 -i -- wc -c`,
		Args: minArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := parsePairs("--env", env)
			if err != nil {
				return err
			}
			// The command's own flags must not be read as ours.
			if cmd.ArgsLenAtDash() != 1 {
				return usageError{fmt.Errorf("put the command after -- (wrenn sandbox exec ID [flags] -- CMD [ARGS...])")}
			}
			opts.Env, opts.Args, opts.Timeout = e, args[2:], timeout
			opts.Stdout, opts.Stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
			if stdin {
				opts.Stdin = cmd.InOrStdin()
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			sb := c.Sandbox(args[0])
			if stdin {
				return execWithStdin(cmd, sb, args[1], opts)
			}
			st, err := sb.ExecStream(cmd.Context(), args[1], opts)
			if err != nil {
				return err
			}
			if !st.Exited {
				fmt.Fprintf(cmd.ErrOrStderr(), "wrenn: the command was ended by a signal (%s)\n", st.Status)
				if st.ExitCode == 0 {
					st.ExitCode = 1
				}
			}
			if st.ExitCode != 0 {
				return exitCodeError{st.ExitCode}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Cwd, "cwd", "", "working directory")
	fl.StringVar(&opts.User, "user", "", "user to run as (default: the template's)")
	fl.StringArrayVar(&env, "env", nil, "environment variable key=value (repeatable)")
	fl.DurationVar(&timeout, "timeout", 0, "kill the command after this long")
	fl.BoolVarP(&stdin, "stdin", "i", false, "send standard input (UTF-8 text, read whole) to the command; its output is then printed when it ends")
	return cmd
}

// execWithStdin runs the command through the unary exec, the one that
// takes stdin; its output comes when it ends.
func execWithStdin(cmd *cobra.Command, sb *wrenn.Sandbox, name string, opts wrenn.ExecOptions) error {
	res, err := sb.Exec(cmd.Context(), name, opts)
	if err != nil {
		return err
	}
	stdout, stderr := []byte(res.Stdout), []byte(res.Stderr)
	if res.Encoding == "base64" {
		if stdout, err = base64.StdEncoding.DecodeString(res.Stdout); err == nil {
			stderr, err = base64.StdEncoding.DecodeString(res.Stderr)
		}
		if err != nil {
			return fmt.Errorf("decode the command's output: %w", err)
		}
	}
	_, _ = cmd.OutOrStdout().Write(stdout)
	_, _ = cmd.ErrOrStderr().Write(stderr)
	if res.Truncated != nil && *res.Truncated {
		fmt.Fprintln(cmd.ErrOrStderr(), "wrenn: the output was truncated (run without -i to stream it)")
	}
	if res.ExitCode != 0 {
		return exitCodeError{res.ExitCode}
	}
	return nil
}
