package source

// Order names the sources in the order the chain would try them now
// (those in backoff last).
func (c *Chain) Order() []string {
	var out []string
	for _, p := range c.order() {
		out = append(out, p.name)
	}
	return out
}
