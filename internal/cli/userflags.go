package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/wrenn-dev/wrenn/sdk/go/wrenn"
)

// userFlags are the flags of every command that drives the platform.
type userFlags struct {
	profile string
	url     string
	output  string
}

func (f *userFlags) register(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.profile, "profile", "", "profile of ~/.config/wrenn/config.json to use (default: WRENN_PROFILE, then the one last logged in)")
	pf.StringVar(&f.url, "url", "", "control plane URL (default: WRENN_URL, then the profile's)")
	pf.StringVarP(&f.output, "output", "o", "table", "output format: table or json")
}

// exitCodeError ends the process with a command's exit code and no message.
type exitCodeError struct{ code int }

func (e exitCodeError) Error() string { return fmt.Sprintf("exit code %d", e.code) }

// errNotLoggedIn is the one line every command prints without credentials.
func errNotLoggedIn(name string) error {
	return fmt.Errorf("not logged in (profile %q): run `wrenn login --url URL --email EMAIL` or `wrenn login --url URL --api-key KEY`, or set WRENN_URL and WRENN_API_KEY", name)
}

// client builds the SDK client: flags, then WRENN_URL / WRENN_API_KEY,
// then the profile.
func (f *userFlags) client() (*wrenn.Client, error) {
	if f.output != "table" && f.output != "json" {
		return nil, usageError{fmt.Errorf("--output must be table or json, not %q", f.output)}
	}
	cfg, _, err := loadUserConfig()
	if err != nil {
		return nil, err
	}
	name := cfg.profileName(f.profile)
	p := cfg.Profiles[name]
	if p == nil {
		p = &profile{}
	}
	c := wrenn.Config{URL: firstSet(f.url, os.Getenv("WRENN_URL"), p.URL), APIKey: os.Getenv("WRENN_API_KEY")}
	if c.APIKey == "" {
		c.APIKey, c.Token = p.APIKey, p.Token
	}
	if c.URL == "" || (c.APIKey == "" && c.Token == "") {
		return nil, errNotLoggedIn(name)
	}
	return wrenn.New(c)
}

func firstSet(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}

// explain turns the API's refusals into what to do about them.
func (f *userFlags) explain(err error) error {
	if err == nil {
		return nil
	}
	var ec exitCodeError
	if errors.As(err, &ec) {
		return err
	}
	if wrenn.IsUnauthorized(err) {
		return fmt.Errorf("the control plane refused the credentials (%v): run `wrenn login` again", err)
	}
	return err
}

// print writes v as JSON, or as a table of rows under header.
func (f *userFlags) print(w io.Writer, v any, header []string, rows [][]string) error {
	if f.output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// isTerminal says whether f is a terminal (for prompts, raw mode and
// progress).
func isTerminal(f any) bool {
	file, ok := f.(*os.File)
	return ok && term.IsTerminal(int(file.Fd()))
}

// userCommand adds the shared flags to a group and explains its errors.
func userCommand(f *userFlags, cmd *cobra.Command) *cobra.Command {
	f.register(cmd)
	wrapRunE(f, cmd)
	return cmd
}

func wrapRunE(f *userFlags, cmd *cobra.Command) {
	if run := cmd.RunE; run != nil {
		cmd.RunE = func(c *cobra.Command, args []string) error { return f.explain(run(c, args)) }
	}
	for _, sub := range cmd.Commands() {
		wrapRunE(f, sub)
	}
}
