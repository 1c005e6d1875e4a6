package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/wrenn-dev/wrenn/internal/atomicfile"
)

// userConfig is ~/.config/wrenn/config.json: the CLI's profiles. It holds
// credentials, so it is written with mode 0600 and never printed.
type userConfig struct {
	// Current is the profile used when --profile is not given.
	Current  string              `json:"current,omitempty"`
	Profiles map[string]*profile `json:"profiles"`
}

type profile struct {
	URL    string `json:"url"`
	APIKey string `json:"api_key,omitempty"`
	// Token is a session token from `wrenn login --email`.
	Token string `json:"token,omitempty"`
	Email string `json:"email,omitempty"`
}

const defaultProfile = "default"

// userConfigPath is under os.UserConfigDir ($XDG_CONFIG_HOME or ~/.config).
func userConfigPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find the config directory: %w", err)
	}
	return filepath.Join(dir, "wrenn", "config.json"), nil
}

func loadUserConfig() (*userConfig, string, error) {
	path, err := userConfigPath()
	if err != nil {
		return nil, "", err
	}
	cfg := &userConfig{Profiles: map[string]*profile{}}
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, path, nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(raw, cfg); err != nil {
		return nil, "", fmt.Errorf("%s is not valid JSON (%v): fix or delete it and log in again", path, err)
	}
	if cfg.Profiles == nil {
		cfg.Profiles = map[string]*profile{}
	}
	return cfg, path, nil
}

func (c *userConfig) save(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	raw, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, append(raw, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// profileName is --profile, else WRENN_PROFILE, else the current one.
func (c *userConfig) profileName(flag string) string {
	switch {
	case flag != "":
		return flag
	case os.Getenv("WRENN_PROFILE") != "":
		return os.Getenv("WRENN_PROFILE")
	case c.Current != "":
		return c.Current
	}
	return defaultProfile
}
