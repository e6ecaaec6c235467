package cache

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// PutDocument stores a signed document and its signature verbatim under its
// repository path ("prod/latest.json", "prod/1.0/manifest.json"), replacing
// any previous one. The cache does not verify signatures: callers verify
// before storing, and endpoints verify again.
func (c *Cache) PutDocument(path string, data, sig []byte) error {
	if err := validKey("document path", path); err != nil {
		return err
	}
	v := encodeDocument(data, sig)
	err := c.update(false, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDocs).Put([]byte(path), v)
	})
	if err != nil {
		return fmt.Errorf("put document %s: %w", path, err)
	}
	return nil
}

// Document returns copies of a stored document and its signature, or
// [ErrNotFound].
func (c *Cache) Document(path string) (data, sig []byte, err error) {
	if err := validKey("document path", path); err != nil {
		return nil, nil, err
	}
	err = c.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketDocs).Get([]byte(path))
		if v == nil {
			return fmt.Errorf("document %s: %w", path, ErrNotFound)
		}
		n, w := binary.Uvarint(v)
		if w <= 0 || n > uint64(len(v)-w) {
			return fmt.Errorf("document %s: bad length prefix: %w", path, ErrCorrupt)
		}
		v = v[w:]
		data = append([]byte{}, v[:n]...)
		sig = append([]byte{}, v[n:]...)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return data, sig, nil
}

// DeleteDocument deletes a stored document, or returns [ErrNotFound].
func (c *Cache) DeleteDocument(path string) error {
	if err := validKey("document path", path); err != nil {
		return err
	}
	return c.update(false, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDocs)
		if b.Get([]byte(path)) == nil {
			return fmt.Errorf("delete document %s: %w", path, ErrNotFound)
		}
		return b.Delete([]byte(path))
	})
}
