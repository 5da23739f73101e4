package main

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// printable is a line for a terminal made of what workers and jobs sent: every
// control or non-printing character (an escape sequence in an error message, a
// job id, a label) is shown escaped, never acted on by the terminal.
func printable(s string) string {
	if !strings.ContainsFunc(s, notPrintable) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if notPrintable(r) {
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func notPrintable(r rune) bool { return !unicode.IsPrint(r) || r == utf8.RuneError }
