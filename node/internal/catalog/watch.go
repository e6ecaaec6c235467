package catalog

import ()

// versionWatch returns a channel closed the next time product's held latest
// changes.
func (c *Catalog) VersionWatch(product string) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch, ok := c.versionChanged[product]
	if !ok {
		ch = make(chan struct{})
		c.versionChanged[product] = ch
	}
	return ch
}

// notifyVersion wakes the watchers of product.
func (c *Catalog) notifyVersion(product string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch, ok := c.versionChanged[product]; ok {
		close(ch)
		delete(c.versionChanged, product)
	}
}
