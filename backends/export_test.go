package backends

import "time"

// The retry schedule is fixed for production (retry.go's defaults); tests make
// it short or count its tries.

// WithRetryAttempts sets the most tries of one request, the first included; n
// below 1 counts as 1 (no retry).
func WithRetryAttempts(n int) RetryOption {
	return func(c *retryConfig) { c.attempts = max(n, 1) }
}

// WithRetryBackoff sets the wait before the first retry, doubled for each further
// one up to most. Each wait is drawn between half its value and its value, so
// that the readers that failed together do not retry together.
func WithRetryBackoff(initial, most time.Duration) RetryOption {
	return func(c *retryConfig) { c.initial, c.most = initial, max(most, initial) }
}
