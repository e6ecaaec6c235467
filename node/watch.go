package node

// versionWatch returns a channel closed the next time product's held latest
// changes.
func (n *Node) versionWatch(product string) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	ch, ok := n.versionChanged[product]
	if !ok {
		ch = make(chan struct{})
		n.versionChanged[product] = ch
	}
	return ch
}

// notifyVersion wakes the watchers of product.
func (n *Node) notifyVersion(product string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ch, ok := n.versionChanged[product]; ok {
		close(ch)
		delete(n.versionChanged, product)
	}
}
