// Package names holds the naming rules both the control plane and the host
// agent apply, so a name one side accepts is never refused by the other.
package names

import (
	"errors"
	"fmt"
)

// MaxTemplate is the longest template name: a DNS label's length, so a
// name can appear in host names later.
const MaxTemplate = 63

// TemplateRule describes the rule for messages.
const TemplateRule = "1-63 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"

// ErrTemplate is wrapped by every refusal of CheckTemplate.
var ErrTemplate = errors.New("invalid template name")

// CheckTemplate validates a template name (an image template, a snapshot
// name, or a snapshot's template ID). The agent uses it as one path
// component under WRENN_DIR/templates, hence no '/', no leading '.', and no
// upper case (file systems that fold case would merge two names).
func CheckTemplate(name string) error {
	if name == "" || len(name) > MaxTemplate {
		return fmt.Errorf("%w %q: must be %s", ErrTemplate, name, TemplateRule)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		lower := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if lower || (i > 0 && (c == '.' || c == '_' || c == '-')) {
			continue
		}
		return fmt.Errorf("%w %q: must be %s", ErrTemplate, name, TemplateRule)
	}
	return nil
}

// ValidTemplate reports whether CheckTemplate accepts name.
func ValidTemplate(name string) bool { return CheckTemplate(name) == nil }
