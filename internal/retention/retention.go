// Package retention deletes rows past their keep time in bounded batches.
package retention

import "context"

// Batches runs del, which deletes at most batch rows per call, until a call
// deletes fewer: no one statement holds many row locks or runs long, so
// retention never stalls the writers of the same table. It returns how
// many rows went, also when del fails.
func Batches(ctx context.Context, batch int32, del func(ctx context.Context, batch int32) (int64, error)) (int64, error) {
	var total int64
	for {
		n, err := del(ctx, batch)
		total += n
		if err != nil || n < int64(batch) {
			return total, err
		}
	}
}
