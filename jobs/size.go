package jobs

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"strconv"
	"strings"
)

// byteUnits are the units a size may carry, in every flag, setting and job
// option that takes one. The binary units (KiB, MiB, …, and Kubernetes' Ki, Mi,
// …) are powers of 1024; the decimal ones (KB or K, MB or M, …) powers of 1000,
// as in SI: 4M is 4000000 bytes, not the 4194304 of 4MiB.
var byteUnits = map[string]int64{
	"": 1, "B": 1,
	"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
	"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
	"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
	"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
}

// sizePattern is a decimal number (no sign, exponent, hex or NaN: strconv's
// float syntax takes all of those), an optional space and a unit.
var sizePattern = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?) ?([A-Za-z]*)$`)

// maxSizeText bounds the text ParseByteSize reads, so that a digit string of
// megabytes cannot make it do big-number arithmetic on it.
const maxSizeText = 64

// ParseByteSize reads "64KiB", "4MiB", "1.5GiB", "50M" or "1048576" as a
// positive whole number of bytes. It is the one parser of sizes: flags, settings
// and job options all go through it. Negative numbers, zero, NaN, exponents,
// fractions of a byte ("1.5", "0.1KiB") and sizes beyond int64 are errors.
func ParseByteSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	bad := func(why string) error {
		return fmt.Errorf("%q is not a byte size such as 64KiB, 4MiB or 1048576: %s", s, why)
	}
	if len(t) > maxSizeText {
		return 0, bad("too long")
	}
	if strings.HasPrefix(t, "-") {
		return 0, bad("negative")
	}
	m := sizePattern.FindStringSubmatch(t)
	if m == nil {
		return 0, bad("want digits, optionally a decimal point, and a unit")
	}
	mult, ok := byteUnits[m[2]]
	if !ok {
		return 0, bad(fmt.Sprintf("unknown unit %q (want B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB)", m[2]))
	}
	n, _ := new(big.Rat).SetString(m[1]) // the pattern admits only decimal numbers
	n.Mul(n, new(big.Rat).SetInt64(mult))
	switch {
	case !n.IsInt():
		return 0, bad("not a whole number of bytes")
	case n.Sign() == 0:
		return 0, bad("zero")
	case !n.Num().IsInt64():
		return 0, bad("too large")
	}
	return n.Num().Int64(), nil
}

// ByteSize is a size in bytes that reads units (ParseByteSize). It is a
// pflag.Value, so that every size flag takes units, and in JSON it is a number
// of bytes or a string with units. Zero means unset.
type ByteSize int64

// binaryUnits are the units String uses, largest first.
var binaryUnits = []string{"TiB", "GiB", "MiB", "KiB"}

// String writes the size in the largest binary unit it is a whole multiple of,
// so that a default shows as 4MiB rather than 4194304; ParseByteSize reads it
// back.
func (b ByteSize) String() string {
	for _, u := range binaryUnits {
		if mult := byteUnits[u]; b != 0 && int64(b)%mult == 0 {
			return strconv.FormatInt(int64(b)/mult, 10) + u
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// Set parses a flag's or a setting's value.
func (b *ByteSize) Set(s string) error {
	n, err := ParseByteSize(s)
	if err != nil {
		return err
	}
	*b = ByteSize(n)
	return nil
}

// Type names the flag's value in help texts.
func (b *ByteSize) Type() string { return "size" }

// UnmarshalJSON takes a number of bytes or a string with units. A number is
// held to the same rules as a string (whole, not negative), except that 0 is
// the unset value of an omitted option.
func (b *ByteSize) UnmarshalJSON(data []byte) error {
	if string(data) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		return b.Set(s)
	}
	var n json.Number
	if err := json.Unmarshal(data, &n); err != nil {
		return errors.New("want a number of bytes or a string such as \"4MiB\"")
	}
	if n == "0" {
		*b = 0
		return nil
	}
	return b.Set(n.String())
}
