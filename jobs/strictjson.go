package jobs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
)

// encoding/json matches object keys to struct fields case-insensitively, with
// Unicode simple folding ("REPOSITORY", "Source" and "ſource" all set a field), and
// lets a later duplicate key win. A filter in front of the queue that looks for
// "repository" would then see one thing and the worker decode another. So before
// a job is decoded, checkKeys walks its tokens and requires every key of every
// object to be exactly a field's JSON name, each at most once.

// maxKeyDepth bounds the nesting the walk follows; a job nests three levels.
const maxKeyDepth = 16

// checkKeys checks the keys of the JSON document data against the type it decodes
// into: object keys of a struct must be its fields' JSON names, spelled exactly;
// no object may repeat a key. Values of the wrong type are left to the decoder.
func checkKeys(data []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return walkValue(dec, t, "", 0)
}

func walkValue(dec *json.Decoder, t reflect.Type, at string, depth int) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	delim, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	if depth >= maxKeyDepth {
		return fmt.Errorf("%s: nested deeper than %d levels", pathName(at), maxKeyDepth)
	}
	switch delim {
	case '{':
		return walkObject(dec, t, at, depth+1)
	case '[':
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for dec.More() {
			if err := walkValue(dec, elem, at+"[]", depth+1); err != nil {
				return err
			}
		}
		_, err = dec.Token() // ]
		return err
	}
	return nil
}

func walkObject(dec *json.Decoder, t reflect.Type, at string, depth int) error {
	var fields map[string]reflect.Type
	if t != nil && t.Kind() == reflect.Struct {
		fields = jsonFields(t)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		if seen[key] {
			return fmt.Errorf("%s: duplicate key %s", pathName(at), quoteShort(key))
		}
		seen[key] = true
		var ft reflect.Type
		switch {
		case fields != nil:
			var ok bool
			if ft, ok = fields[key]; !ok {
				return fmt.Errorf("%s: unknown key %s (keys are case-sensitive)", pathName(at), quoteShort(key))
			}
		case t != nil && t.Kind() == reflect.Map:
			ft = t.Elem()
		}
		if err := walkValue(dec, ft, at+"."+key, depth); err != nil {
			return err
		}
	}
	_, err := dec.Token() // }
	return err
}

// jsonFields maps the JSON names of t's exported fields to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

func pathName(at string) string {
	if at == "" {
		return "job"
	}
	return quoteShort(strings.TrimPrefix(at, "."))
}

// maxQuoted is how much of a value from a rejected job a message repeats.
const maxQuoted = 64

// quoteShort is s for a message about a job that was rejected: cut to maxQuoted
// bytes (on a rune boundary) and quoted with every non-ASCII or control character
// escaped, so that logs, events and terminals show what was sent and never act on
// it.
func quoteShort(s string) string {
	cut := len(s) > maxQuoted
	if cut {
		s = s[:maxQuoted]
		for len(s) > 0 && !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	q := strconv.QuoteToASCII(s)
	if cut {
		q += "…"
	}
	return q
}

// peekID reads the id of a job that does not decode, if it can: only a top-level
// key spelled exactly "id", given once, with a string value, in a well-formed
// object, counts. A failure event may then name the job.
func peekID(data []byte) string {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return ""
	}
	id, found := "", false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return ""
		}
		if tok != "id" {
			continue
		}
		if found || json.Unmarshal(v, &id) != nil {
			return ""
		}
		found = true
	}
	return id
}
