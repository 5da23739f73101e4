package s3

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/blockferry/blockferry/sinks"
)

// Retries of one S3 request. The SDK retries throttling (503 SlowDown), 5xx and
// connection errors (refused, reset); answers such as access denied or a missing
// key fail at once. Its own backoff since 2026 starts at 50 ms with full jitter,
// so its retries were spent within 3 to 6 s of an outage. Here the waits double
// from retryBaseDelay up to maxBackoff, and each is half its step plus a random
// part of the other half, so that parallel uploads do not retry in step: the
// retries of a request wait at least 65.5 s (minRetryWait in the tests) and at most twice that
// before it fails, which rides out a minute of outage or a server restart.
const (
	maxAttempts    = 11
	retryBaseDelay = time.Second
	maxBackoff     = 20 * time.Second
)

// backoffStep is the step of the wait after the attempt-th attempt (from 1)
// failed: retryBaseDelay doubled per attempt, at most maxBackoff.
func backoffStep(attempt int) time.Duration {
	d := retryBaseDelay
	for i := 1; i < attempt && d < maxBackoff; i++ {
		d *= 2
	}
	return min(d, maxBackoff)
}

// equalJitter is the retryer's retry.BackoffDelayer: half the step, plus a
// random part of the other half.
type equalJitter struct{}

func (equalJitter) BackoffDelay(attempt int, _ error) (time.Duration, error) {
	step := backoffStep(attempt)
	return step/2 + rand.N(step/2+1), nil
}

// newClient is the S3 client for the URI's bucket: credentials (unless the URI
// names a credentials file) and, unless the URI names one, the region from the
// standard AWS chain; the HTTP client and retryer
// below. It does no network I/O.
func newClient(ctx context.Context, c uriConfig) (*s3.Client, error) {
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(newHTTPClient()),
		config.WithRetryer(newRetryer),
	}
	if c.region != "" {
		opts = append(opts, config.WithRegion(c.region))
	}
	if c.profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(c.profile))
	}
	if c.credentialsFile != "" {
		// Read at each open, so that rotated credentials are picked up by the
		// next job; they reach this client only, never the environment.
		creds, err := ReadCredentialsFile(c.credentialsFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, config.WithCredentialsProvider(credentials.StaticCredentialsProvider{Value: creds}))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, &storeError{msg: fmt.Sprintf("%s: loading AWS configuration: %v", c.name, err), kind: sinks.ErrInvalidLocation, err: err}
	}
	if cfg.Region == "" {
		if c.endpoint == "" {
			return nil, invalid("%s: no region; add region= to the URI or set AWS_REGION", c.name)
		}
		// Most S3-compatible servers accept (or ignore) us-east-1.
		cfg.Region = "us-east-1"
	}

	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		if c.endpoint != "" {
			o.BaseEndpoint = aws.String(c.endpoint)
		}
		o.UsePathStyle = c.pathStyle
		// Wrapped here, after the SDK configured it (a CA bundle, timeouts): it
		// configures only a client of its own type.
		o.HTTPClient = boundedBodies{next: o.HTTPClient}
		// Since early 2025 the SDK adds CRC checksums (and aws-chunked trailers) to
		// every upload and validates them on download by default; many
		// S3-compatible servers reject or mangle those. Checksums only where an API
		// demands them keeps requests plain SigV4. Set here rather than via
		// LoadOptions so AWS_REQUEST_CHECKSUM_CALCULATION cannot flip it back.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	}), nil
}

// exchangeTimeout bounds one HTTP exchange, from the dial to the last byte of the
// answer's body: a server that stalls in the middle of a body (or never reads a
// PUT's) would otherwise hold the job, and its worker's slot, until somebody
// cancels it. Objects are at most 64 MiB, which takes a minute at 1 MiB/s. The
// error is a timeout: the SDK retries an attempt that timed out before its
// answer, and a job one that timed out in a body. A variable for tests.
var exchangeTimeout = 10 * time.Minute

// newHTTPClient is the SDK's default client with a larger idle pool: Go keeps only
// 2 idle connections per host by default (the SDK raises it to 10), so with dozens
// of uploads in flight most connections would be closed after one request and
// re-dialed.
func newHTTPClient() *awshttp.BuildableClient {
	return awshttp.NewBuildableClient().WithTimeout(exchangeTimeout).WithTransportOptions(func(tr *http.Transport) {
		tr.MaxIdleConns = 256
		tr.MaxIdleConnsPerHost = 128
		tr.IdleConnTimeout = 90 * time.Second
		// A server that accepted a request and then went silent would otherwise hang
		// the operation until its context ends; a timeout lets the retryer act.
		tr.ResponseHeaderTimeout = 5 * time.Minute
	}).WithDialerOptions(func(d *net.Dialer) {
		d.Timeout = 30 * time.Second
		d.KeepAlive = 30 * time.Second
	})
}

func newRetryer() aws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = maxAttempts
		o.MaxBackoff = maxBackoff
		o.Backoff = equalJitter{}
		// The default client-side retry quota (a token bucket shared by all calls)
		// gives up on every retry after ~35 failures, which a backup with 64
		// uploads in flight reaches within one brief server hiccup. Backoff alone
		// is the politer and more robust limit here.
		o.RateLimiter = ratelimit.None
		// 409 ConditionalRequestConflict means another conditional write of the
		// same key was in flight; retrying settles whether it won (412) or not.
		// 400 BadDigest (versitygw, AWS) and XAmzContentChecksumMismatch (MinIO)
		// mean the body did not match its checksum: corrupted in transit, so
		// sending it again may well succeed.
		o.Retryables = append(o.Retryables, retry.RetryableErrorCode{
			Codes: map[string]struct{}{"ConditionalRequestConflict": {}, "BadDigest": {}, "XAmzContentChecksumMismatch": {}},
		})
	})
}
