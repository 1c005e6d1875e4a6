package cli

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/migrate"
)

func newMigrateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply or roll back database migrations (uses DATABASE_URL)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError{errors.New("migrate needs a subcommand: up, down or status")}
		},
	}
	open := func() (*migrate.Migrator, error) {
		url := os.Getenv("DATABASE_URL")
		if url == "" {
			return nil, errors.New("DATABASE_URL: is required (a PostgreSQL URL)")
		}
		m, err := migrate.Open(url)
		if err != nil {
			return nil, fmt.Errorf("DATABASE_URL: %w", err)
		}
		return m, nil
	}
	up := &cobra.Command{
		Use:   "up",
		Short: "Apply all pending migrations",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := open()
			if err != nil {
				return err
			}
			defer m.Close()
			res, err := m.Up(cmd.Context())
			for _, r := range res {
				fmt.Fprintf(cmd.OutOrStdout(), "applied %s (%s)\n", r.Source.Path, r.Duration)
			}
			if err != nil {
				return err
			}
			v, err := m.Version(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "database at version %d\n", v)
			return nil
		},
	}
	var to string
	down := &cobra.Command{
		Use:   "down",
		Short: "Roll back the newest migration (or all newer than --to)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := open()
			if err != nil {
				return err
			}
			defer m.Close()
			if to == "" {
				r, err := m.Down(cmd.Context())
				if r != nil {
					fmt.Fprintf(cmd.OutOrStdout(), "rolled back %s\n", r.Source.Path)
				}
				return err
			}
			v, err := strconv.ParseInt(to, 10, 64)
			if err != nil || v < 0 {
				return usageError{fmt.Errorf("--to must be a version number >= 0, got %q", to)}
			}
			res, err := m.DownTo(cmd.Context(), v)
			for _, r := range res {
				fmt.Fprintf(cmd.OutOrStdout(), "rolled back %s\n", r.Source.Path)
			}
			return err
		},
	}
	down.Flags().StringVar(&to, "to", "", "roll back every migration newer than this version (0 = all)")
	status := &cobra.Command{
		Use:   "status",
		Short: "Show which migrations are applied",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := open()
			if err != nil {
				return err
			}
			defer m.Close()
			return m.WriteStatus(cmd.Context(), cmd.OutOrStdout())
		},
	}
	cmd.AddCommand(up, down, status)
	return cmd
}
