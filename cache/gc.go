package cache

import (
	"encoding/json"
	"fmt"
	"sort"

	bolt "go.etcd.io/bbolt"
)

// Unreferenced returns the whole blobs that no recorded version references,
// oldest first: what an eviction can delete without dropping a version
// (blobs pulled through for a cold site, blobs of deleted versions).
func (c *Cache) Unreferenced() ([]BlobInfo, error) {
	var out []BlobInfo
	err := c.view(func(tx *bolt.Tx) error {
		refs := make(map[string]bool)
		root := tx.Bucket(bucketVersions)
		err := root.ForEachBucket(func(name []byte) error {
			return root.Bucket(name).ForEach(func(k, val []byte) error {
				var v Version
				if err := json.Unmarshal(val, &v); err != nil {
					return fmt.Errorf("version record %s/%x: %w (%w)", name, k, ErrCorrupt, err)
				}
				for _, d := range v.Blobs {
					refs[d] = true
				}
				return nil
			})
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketBlobs).ForEach(func(kb, val []byte) error {
			k, err := keyOf(kb)
			if err != nil {
				return err
			}
			m, err := decodeMeta(k, val)
			if err != nil {
				return err
			}
			if m.state == stateWhole && !refs[k.String()] {
				out = append(out, m.info(k))
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list unreferenced blobs: %w", err)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Added.Before(out[j].Added) })
	return out, nil
}
