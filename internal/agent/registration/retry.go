package registration

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"time"
)

// Backoff spaces out the attempts of a control plane call that failed for a
// reason that may pass: a 5xx answer or a network error. Each wait doubles
// from Initial up to Max and is jittered so a fleet of agents does not retry
// in step after a control plane restart.
type Backoff struct {
	Initial time.Duration // 1 s when zero
	Max     time.Duration // 1 min when zero
}

func (b Backoff) withDefaults() Backoff {
	if b.Initial <= 0 {
		b.Initial = time.Second
	}
	if b.Max <= 0 {
		b.Max = time.Minute
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	return b
}

// wait is the pause before attempt n+1 (n counts from 1): between half and
// all of Initial·2^(n-1), capped at Max.
func (b Backoff) wait(n int) time.Duration {
	d := b.Initial
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	return d/2 + rand.N(d/2+1)
}

// Transient reports whether a failed control plane call may succeed when
// repeated: the control plane could not be reached, timed out, or answered
// 5xx, 408 or 429. Any other answer is its definitive refusal.
func Transient(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status >= 500 || ae.Status == http.StatusRequestTimeout || ae.Status == http.StatusTooManyRequests
	}
	var ue *url.Error
	return errors.As(err, &ue)
}

// retry runs call until it succeeds, fails definitively, or ctx ends; it
// returns call's last error (ctx's when it ended during a wait).
func retry(ctx context.Context, b Backoff, log *slog.Logger, what string, call func(context.Context) error) error {
	b = b.withDefaults()
	for n := 1; ; n++ {
		err := call(ctx)
		if err == nil || !Transient(err) || ctx.Err() != nil {
			return err
		}
		d := b.wait(n)
		log.Warn(what+" failed; retrying", "attempt", n, "retry_in", d.Round(time.Millisecond), "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}
