package cache

import (
	"bytes"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// PutRecord stores an opaque value under key in the named record bucket
// (created on first use), replacing any previous value. The node uses it for
// endpoint reports, keyed by endpoint id and product.
func (c *Cache) PutRecord(bucket, key string, value []byte) error {
	if err := validKey("record bucket", bucket); err != nil {
		return err
	}
	if err := validKey("record key", key); err != nil {
		return err
	}
	err := c.update(false, func(tx *bolt.Tx) error {
		b, err := tx.Bucket(bucketRecords).CreateBucketIfNotExists([]byte(bucket))
		if err != nil {
			return err
		}
		return b.Put([]byte(key), value)
	})
	if err != nil {
		return fmt.Errorf("put record %s/%s: %w", bucket, key, err)
	}
	return nil
}

// Records calls fn for each record of the bucket in key order, with copies of
// the values, after the read transaction has ended (fn may call the Cache).
// An unknown bucket has no records. An error from fn stops the iteration and
// is returned.
func (c *Cache) Records(bucket string, fn func(key string, value []byte) error) error {
	if err := validKey("record bucket", bucket); err != nil {
		return err
	}
	type kv struct {
		k string
		v []byte
	}
	var all []kv
	err := c.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRecords).Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			all = append(all, kv{string(k), bytes.Clone(v)})
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("read records %s: %w", bucket, err)
	}
	for _, r := range all {
		if err := fn(r.k, r.v); err != nil {
			return err
		}
	}
	return nil
}

// DeleteRecord deletes one record; deleting a missing one is not an error.
func (c *Cache) DeleteRecord(bucket, key string) error {
	if err := validKey("record bucket", bucket); err != nil {
		return err
	}
	if err := validKey("record key", key); err != nil {
		return err
	}
	return c.update(false, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRecords).Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		return b.Delete([]byte(key))
	})
}
