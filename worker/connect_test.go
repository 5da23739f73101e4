package worker

import (
	"strings"
	"testing"
)

func TestRedactURLs(t *testing.T) {
	in := "nats://alice:s3cret@10.0.0.1:4222, nats://t0ken@10.0.0.2:4222,nats://10.0.0.3:4222,nats://bob:p%zz@x"
	got := RedactURLs(in)
	for _, secret := range []string{"s3cret", "t0ken", "p%zz"} {
		if strings.Contains(got, secret) {
			t.Errorf("%q shows %q", got, secret)
		}
	}
	if !strings.Contains(got, "alice:xxxxx@10.0.0.1:4222") || !strings.Contains(got, "nats://10.0.0.3:4222") {
		t.Errorf("RedactURLs = %q", got)
	}
	_, err := Connect(ConnectOptions{URLs: "nats://alice:s3cret@127.0.0.1:1"})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("connect error %v", err)
	}
}
