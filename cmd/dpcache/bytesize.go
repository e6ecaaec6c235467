package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/dpcache/dpcache/node"
)

// byteUnits are the suffixes parseBytes accepts: binary (KiB, and K or k
// alone) and decimal (KB), case-insensitive.
var byteUnits = []struct {
	suffix string
	mult   float64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40},
	{"b", 1},
}

// parseBytes parses a byte count: a plain number ("1048576"), or a number
// with a unit: KiB, MiB, GiB, TiB (powers of 1024; K, M, G, T alone mean
// the same), KB, MB, GB, TB (powers of 1000), B. "10MiB", "1.5 GiB" and
// "500k" work.
func parseBytes(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1.0
	for _, u := range byteUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || t == "" || strings.ContainsAny(t, "eEnN+") {
		return 0, fmt.Errorf("%q is not a byte count (want e.g. 1048576, 500KiB, 10MiB, 2GB)", s)
	}
	v := f * mult
	if v < 0 || v > math.MaxInt64/2 {
		return 0, fmt.Errorf("%q is out of range (want 0 or more)", s)
	}
	return int64(math.Round(v)), nil
}

// bytesFlag is a pflag.Value of a byte count (see parseBytes).
type bytesFlag struct{ p *int64 }

func (b bytesFlag) String() string {
	if b.p == nil || *b.p == 0 {
		return "0"
	}
	return strconv.FormatInt(*b.p, 10)
}

func (b bytesFlag) Set(s string) error {
	v, err := parseBytes(s)
	if err != nil {
		return err
	}
	*b.p = v
	return nil
}

func (bytesFlag) Type() string { return "bytes" }

// windowFlag is a pflag.Value of a daily time window (node.ParseWindow).
type windowFlag struct{ p *node.Window }

func (w windowFlag) String() string {
	if w.p == nil {
		return ""
	}
	return w.p.String()
}

func (w windowFlag) Set(s string) error {
	v, err := node.ParseWindow(strings.TrimSpace(s))
	if err != nil {
		return err
	}
	*w.p = v
	return nil
}

func (windowFlag) Type() string { return "HH:MM-HH:MM" }
