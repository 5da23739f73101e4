package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
)

// violations hands the server's asynchronous permission violations of one
// connection to the requests waiting on it. A publish the server refuses gets no
// answer, only an -ERR that nats.go reports to the connection's error handler:
// without this, a submit on a subject its account may not publish to waited for
// its whole timeout and then failed with "context deadline exceeded".
type violations struct {
	mu      sync.Mutex
	waiters map[*violationWaiter]struct{}
}

type violationWaiter struct {
	subject string
	cancel  context.CancelCauseFunc
}

// connViolations finds a connection's violations from the connection, which is
// all a Client has (through jetstream.JetStream.Conn).
var connViolations sync.Map // *nats.Conn -> *violations

// handle is the connection's asynchronous error handler: it prints the error as
// nats.go's default handler does and ends the requests on the refused subject.
func (v *violations) handle(nc *nats.Conn, _ *nats.Subscription, err error) {
	id, _ := nc.GetClientID()
	fmt.Fprintf(os.Stderr, "%v on connection [%d]\n", err, id)
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for w := range v.waiters {
		if strings.Contains(err.Error(), fmt.Sprintf("%q", w.subject)) {
			w.cancel(err)
		}
	}
}

// watchViolations returns a context that ends, with the violation as its
// cause, when the server refuses a publish on subject over nc; stop releases
// it. Connections not made by Connect have no watch: ctx is returned as it is.
func watchViolations(ctx context.Context, nc *nats.Conn, subject string) (watched context.Context, stop func()) {
	value, ok := connViolations.Load(nc)
	if !ok {
		return ctx, func() {}
	}
	v := value.(*violations)
	watched, cancel := context.WithCancelCause(ctx)
	w := &violationWaiter{subject: subject, cancel: cancel}
	v.mu.Lock()
	if v.waiters == nil {
		v.waiters = map[*violationWaiter]struct{}{}
	}
	v.waiters[w] = struct{}{}
	v.mu.Unlock()
	return watched, func() {
		v.mu.Lock()
		delete(v.waiters, w)
		v.mu.Unlock()
		cancel(nil)
	}
}
