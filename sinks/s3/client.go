package s3

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// maxAttempts bounds the SDK's retries of throttling (503 SlowDown), 5xx and
// connection errors; with its exponential backoff capped at maxBackoff this rides
// out roughly a minute of server trouble before an operation fails.
const (
	maxAttempts = 8
	maxBackoff  = 20 * time.Second
)

// newClient is the S3 client for the URI's bucket: credentials and, unless the URI
// names one, the region from the standard AWS chain; the HTTP client and retryer
// below. It does no network I/O.
func newClient(ctx context.Context, c uriConfig) (*s3.Client, error) {
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(newHTTPClient()),
		config.WithRetryer(newRetryer),
	}
	if c.region != "" {
		opts = append(opts, config.WithRegion(c.region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: loading AWS configuration: %w", c.name, err)
	}
	if cfg.Region == "" {
		if c.endpoint == "" {
			return nil, fmt.Errorf("%s: no region; add region= to the URI or set AWS_REGION", c.name)
		}
		// Most S3-compatible servers accept (or ignore) us-east-1.
		cfg.Region = "us-east-1"
	}

	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		if c.endpoint != "" {
			o.BaseEndpoint = aws.String(c.endpoint)
		}
		o.UsePathStyle = c.pathStyle
		// Since early 2025 the SDK adds CRC checksums (and aws-chunked trailers) to
		// every upload and validates them on download by default; many
		// S3-compatible servers reject or mangle those. Checksums only where an API
		// demands them keeps requests plain SigV4. Set here rather than via
		// LoadOptions so AWS_REQUEST_CHECKSUM_CALCULATION cannot flip it back.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	}), nil
}

// newHTTPClient is the SDK's default client with a larger idle pool: Go keeps only
// 2 idle connections per host by default (the SDK raises it to 10), so with dozens
// of uploads in flight most connections would be closed after one request and
// re-dialed.
func newHTTPClient() *awshttp.BuildableClient {
	return awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
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
		// The default client-side retry quota (a token bucket shared by all calls)
		// gives up on every retry after ~35 failures, which a backup with 64
		// uploads in flight reaches within one brief server hiccup. Backoff alone
		// is the politer and more robust limit here.
		o.RateLimiter = ratelimit.None
		// 409 ConditionalRequestConflict means another conditional write of the
		// same key was in flight; retrying settles whether it won (412) or not.
		o.Retryables = append(o.Retryables, retry.RetryableErrorCode{
			Codes: map[string]struct{}{"ConditionalRequestConflict": {}},
		})
	})
}
