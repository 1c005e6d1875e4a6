package retention

import (
	"context"
	"errors"
	"testing"
)

func TestBatches(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name      string
		rows      int64 // rows to delete
		failAfter int   // calls before del fails; 0: never
		want      int64
		calls     int
		err       error
	}{
		{"none", 0, 0, 0, 1, nil},
		{"under a batch", 3, 0, 3, 1, nil},
		{"exactly a batch", 5, 0, 5, 2, nil},
		{"several batches", 12, 0, 12, 3, nil},
		{"fails on the second", 12, 1, 5, 2, boom},
	} {
		t.Run(tc.name, func(t *testing.T) {
			left, calls := tc.rows, 0
			got, err := Batches(context.Background(), 5, func(_ context.Context, batch int32) (int64, error) {
				calls++
				if tc.failAfter > 0 && calls > tc.failAfter {
					return 0, boom
				}
				n := min(left, int64(batch))
				left -= n
				return n, nil
			})
			if got != tc.want || calls != tc.calls || !errors.Is(err, tc.err) {
				t.Fatalf("deleted %d in %d calls (%v), want %d in %d (%v)", got, calls, err, tc.want, tc.calls, tc.err)
			}
		})
	}
}
