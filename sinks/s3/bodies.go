package s3

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"strings"

	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/blockferry/blockferry/sinks"
)

// What the client reads of an answer's body, at most. The SDK copies an error
// answer's body whole into a buffer before it parses it, and parses a
// successful answer's XML to its end: without these bounds a server could make
// a worker allocate what it likes (a 400 with a 512 MiB body cost 14 GiB, and
// the body became the error's text). GetObject's bodies are readBody's to bound,
// by the reader's limit.
const (
	// errorBodyLimit: S3 error documents hold a code, a message, the key or
	// bucket and request ids: a few hundred bytes, a few KiB at most.
	errorBodyLimit = 64 << 10
	// answerBodyLimit: the largest successful answers besides GetObject's are
	// a ListObjectsV2 page of 1000 keys and DeleteObjects' errors for 1000
	// keys. A key has up to 1024 bytes, which XML escaping makes at most 5 times
	// as long ("&#34;" for a quote), and an entry some 500 bytes of size, date,
	// ETag, storage class and owner besides: 5.6 MiB at the very worst (our own
	// keys make pages of about 150 KiB). 16 MiB leaves a margin of 3 over that.
	answerBodyLimit = 16 << 20
	// errorTextLimit bounds what of a cut error answer's code and message goes
	// into the error the SDK makes of it.
	errorTextLimit = 256
)

// boundedBodies is the S3 client's HTTP client: next, with the bodies of its
// answers bounded as above.
type boundedBodies struct {
	next s3.HTTPClient
}

func (c boundedBodies) Do(req *http.Request) (*http.Response, error) {
	resp, err := c.next.Do(req)
	if err != nil {
		return resp, err
	}
	switch op := awsmiddleware.GetOperationName(req.Context()); {
	case resp.StatusCode >= 300:
		resp.Body = cutErrorBody(resp.Body, resp.StatusCode)
	case op != "GetObject":
		resp.Body = &cutBody{body: resp.Body, left: answerBodyLimit, op: op}
	}
	return resp, nil
}

// cutErrorBody reads an error answer's body, up to errorBodyLimit, and returns
// what the SDK is to parse instead. A body within the bound is passed on as it
// came (with the error that ended its reading, if any). A longer one is not read
// further, and becomes an S3 error document of its own: the server's error code
// (its HTTP status, as the SDK derives one, if its first bytes hold none) and a
// message that says the answer was cut, starting with the server's message. The
// SDK's retryer then treats it as the server's error (retries a 5xx or SlowDown,
// fails at once on a 4xx), and the store's error mapping sees its code; a body
// merely cut short would be an XML syntax error that says neither.
func cutErrorBody(body io.ReadCloser, status int) io.ReadCloser {
	defer body.Close()
	head, err := io.ReadAll(io.LimitReader(body, errorBodyLimit+1))
	if len(head) <= errorBodyLimit {
		var rest io.Reader = http.NoBody
		if err != nil {
			rest = failingReader{err}
		}
		return io.NopCloser(io.MultiReader(bytes.NewReader(head), rest))
	}
	code, message := errorFields(head)
	if code == "" {
		code = strings.ReplaceAll(http.StatusText(status), " ", "")
	}
	if code == "" {
		code = fmt.Sprintf("HTTP%d", status)
	}
	text := fmt.Sprintf("error answer (HTTP %d) longer than %d KiB, not read further", status, errorBodyLimit>>10)
	if message != "" {
		text += "; its message starts: " + message
	}
	doc, err := xml.Marshal(struct {
		XMLName xml.Name `xml:"Error"`
		Code    string
		Message string
	}{Code: code, Message: text})
	if err != nil { // strings always marshal
		return io.NopCloser(failingReader{err})
	}
	return io.NopCloser(bytes.NewReader(doc))
}

// errorFields returns the Code and the start of the Message (each at most
// errorTextLimit bytes) of the first bytes of an S3 error document: the
// elements of those names that the XML holds before it ends or goes wrong.
func errorFields(head []byte) (code, message string) {
	d := xml.NewDecoder(bytes.NewReader(head))
	var in string
	var text [2]strings.Builder
	for {
		tok, err := d.Token()
		if err != nil {
			break
		}
		switch t := tok.(type) {
		case xml.StartElement:
			in = t.Name.Local
		case xml.EndElement:
			in = ""
		case xml.CharData:
			switch in {
			case "Code":
				text[0].Write(t)
			case "Message":
				text[1].Write(t)
			}
		}
	}
	return cutText(text[0].String()), cutText(text[1].String())
}

// cutText is s cut to errorTextLimit bytes of valid UTF-8, its spaces trimmed.
func cutText(s string) string {
	if len(s) > errorTextLimit {
		s = s[:errorTextLimit]
	}
	return strings.TrimSpace(strings.ToValidUTF8(s, ""))
}

// failingReader fails every read with its error.
type failingReader struct{ err error }

func (r failingReader) Read([]byte) (int, error) { return 0, r.err }

// cutBody is a successful answer's body that fails with errAnswerTooLong once
// it turns out longer than left bytes.
type cutBody struct {
	body io.ReadCloser
	left int64
	op   string
}

func (b *cutBody) Read(p []byte) (int, error) {
	// One byte past the bound tells a body of exactly the bound from a longer one.
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.body.Read(p)
	if int64(n) > b.left {
		b.left = 0
		return n - 1, &answerTooLongError{op: b.op}
	}
	b.left -= int64(n)
	return n, err
}

func (b *cutBody) Close() error { return b.body.Close() }

// answerTooLongError: a successful answer's body was longer than
// answerBodyLimit. It says nothing of connections or timeouts: the SDK's
// retryer does not retry it, the same request would get the same answer.
type answerTooLongError struct{ op string }

func (e *answerTooLongError) Error() string {
	return fmt.Sprintf("%s answer longer than %d MiB, not read further", e.op, answerBodyLimit>>20)
}

func (e *answerTooLongError) Unwrap() error { return sinks.ErrBadAnswer }
