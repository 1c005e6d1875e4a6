package cli

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/wrenn-dev/wrenn/sdk/go/wrenn"
)

func newLoginCmd(f *userFlags) *cobra.Command {
	var email, apiKey string
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Sign in to a control plane and save the credentials in a profile",
		Long: `Sign in with an email and password (a session, needed for API keys and
template builds) or save an API key. The credentials are checked, then stored
in ~/.config/wrenn/config.json (mode 0600) under --profile (default "default"),
which becomes the current profile. The password is read from the terminal,
or from the first line of standard input when it is not a terminal.`,
		Example: `  wrenn login --url http://localhost:8080 --email me@example.com
  wrenn login --url https://wrenn.example.com --api-key wrn_... --profile prod
  echo "$PASSWORD" | wrenn login --url http://localhost:8080 --email me@example.com`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (email == "") == (apiKey == "") {
				return usageError{errors.New("give --email (and a password) or --api-key")}
			}
			cfg, path, err := loadUserConfig()
			if err != nil {
				return err
			}
			name := cfg.profileName(f.profile)
			old := cfg.Profiles[name]
			url := firstSet(f.url, os.Getenv("WRENN_URL"))
			if url == "" && old != nil {
				url = old.URL
			}
			if url == "" {
				return usageError{errors.New("give the control plane's --url (or set WRENN_URL)")}
			}
			p := &profile{URL: url, APIKey: apiKey, Email: email}
			if email != "" {
				password, err := readPassword(cmd)
				if err != nil {
					return err
				}
				anon, err := wrenn.New(wrenn.Config{URL: url})
				if err != nil {
					return err
				}
				sess, err := anon.Login(cmd.Context(), email, password)
				if err != nil {
					return fmt.Errorf("log in as %s: %w", email, err)
				}
				p.Token = sess.Token
			} else {
				c, err := wrenn.New(wrenn.Config{URL: url, APIKey: apiKey})
				if err != nil {
					return err
				}
				// Any authenticated read proves the key.
				if _, err := c.ListTemplates(cmd.Context()); err != nil {
					return fmt.Errorf("check the API key: %w", err)
				}
			}
			cfg.Profiles[name] = p
			cfg.Current = name
			if err := cfg.save(path); err != nil {
				return err
			}
			who := email
			if who == "" {
				who = "an API key"
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "Logged in to %s as %s (profile %q).\n", url, who, name)
			return nil
		},
	}
	cmd.Flags().StringVar(&email, "email", "", "sign in with this email and a password")
	cmd.Flags().StringVar(&apiKey, "api-key", "", "save this API key (wrn_...) instead")
	return cmd
}

func readPassword(cmd *cobra.Command) (string, error) {
	in := cmd.InOrStdin()
	if file, ok := in.(*os.File); ok && term.IsTerminal(int(file.Fd())) {
		fmt.Fprint(cmd.ErrOrStderr(), "Password: ")
		b, err := term.ReadPassword(int(file.Fd()))
		fmt.Fprintln(cmd.ErrOrStderr())
		if err != nil {
			return "", fmt.Errorf("read the password: %w", err)
		}
		return string(b), nil
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("no password on standard input: %v", err)
	}
	return line, nil
}

func newLogoutCmd(f *userFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "logout",
		Short: "Forget a profile's credentials",
		Example: `  wrenn logout
  wrenn logout --profile prod`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, path, err := loadUserConfig()
			if err != nil {
				return err
			}
			name := cfg.profileName(f.profile)
			p := cfg.Profiles[name]
			if p == nil {
				return fmt.Errorf("no profile %q to log out of", name)
			}
			if p.Token != "" {
				// Revoke the session on the server too; forgetting it
				// locally is what matters if that fails.
				if c, err := wrenn.New(wrenn.Config{URL: p.URL, Token: p.Token}); err == nil {
					_, _ = c.API().LogoutWithResponse(cmd.Context())
				}
			}
			delete(cfg.Profiles, name)
			if cfg.Current == name {
				cfg.Current = ""
			}
			if err := cfg.save(path); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "Logged out of profile %q.\n", name)
			return nil
		},
	}
}
