package cache

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Version is a product version whose blobs the cache holds whole.
type Version struct {
	Product string    `json:"product"`
	Version string    `json:"version"`
	Serial  uint64    `json:"serial"`
	Blobs   []string  `json:"blobs"` // digests the version references
	Size    int64     `json:"size"`  // sum of the version's file sizes
	Added   time.Time `json:"added"` // when it was recorded; PutVersion sets it when zero
}

// versionKey orders a product's versions by serial.
func versionKey(serial uint64, version string) []byte {
	k := make([]byte, 8, 8+len(version))
	binary.BigEndian.PutUint64(k, serial)
	return append(k, version...)
}

// PutVersion records v as held whole. In one transaction it checks that
// every digest in v.Blobs is whole (else [ErrIncomplete], naming the first
// missing digest) and stores v, replacing a version of the same name. Since
// [Cache.DeleteBlob] drops the versions referencing a blob, a recorded
// version stays whole until it is deleted.
func (c *Cache) PutVersion(v Version) error {
	if err := validName("product", v.Product); err != nil {
		return fmt.Errorf("put version: %w", err)
	}
	if err := validName("version", v.Version); err != nil {
		return fmt.Errorf("put version: %w", err)
	}
	if v.Size < 0 {
		return fmt.Errorf("put version %s/%s: negative size %d: %w", v.Product, v.Version, v.Size, ErrInvalid)
	}
	keys := make([]key, len(v.Blobs))
	for i, d := range v.Blobs {
		k, err := parseDigest(d)
		if err != nil {
			return fmt.Errorf("put version %s/%s: %w", v.Product, v.Version, err)
		}
		keys[i] = k
	}
	if v.Added.IsZero() {
		v.Added = time.Now()
	}
	v.Added = v.Added.UTC()
	val, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("put version %s/%s: %w", v.Product, v.Version, err)
	}
	return c.update(false, func(tx *bolt.Tx) error {
		for _, k := range keys {
			m, ok, err := getMeta(tx, k)
			if err != nil {
				return err
			}
			if !ok || m.state != stateWhole {
				return fmt.Errorf("put version %s/%s: blob %s: %w", v.Product, v.Version, k, ErrIncomplete)
			}
		}
		b, err := tx.Bucket(bucketVersions).CreateBucketIfNotExists([]byte(v.Product))
		if err != nil {
			return err
		}
		if _, err := deleteVersionTx(b, v.Version); err != nil {
			return err
		}
		return b.Put(versionKey(v.Serial, v.Version), val)
	})
}

// deleteVersionTx deletes the entries named version from a product bucket.
func deleteVersionTx(b *bolt.Bucket, version string) (bool, error) {
	var del [][]byte
	err := b.ForEach(func(k, _ []byte) error {
		if len(k) > 8 && string(k[8:]) == version {
			del = append(del, append([]byte{}, k...))
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	for _, k := range del {
		if err := b.Delete(k); err != nil {
			return false, err
		}
	}
	return len(del) > 0, nil
}

// deleteVersionsReferencing drops every version that references digest.
func deleteVersionsReferencing(tx *bolt.Tx, digest string) ([]string, error) {
	var dropped []string
	root := tx.Bucket(bucketVersions)
	var products [][]byte
	if err := root.ForEachBucket(func(name []byte) error {
		products = append(products, append([]byte{}, name...))
		return nil
	}); err != nil {
		return nil, err
	}
	for _, p := range products {
		b := root.Bucket(p)
		var del [][]byte
		err := b.ForEach(func(k, val []byte) error {
			var v Version
			if err := json.Unmarshal(val, &v); err != nil {
				return fmt.Errorf("version record %s/%x: %w (%w)", p, k, ErrCorrupt, err)
			}
			for _, d := range v.Blobs {
				if d == digest {
					del = append(del, append([]byte{}, k...))
					dropped = append(dropped, v.Product+"/"+v.Version)
					break
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		for _, k := range del {
			if err := b.Delete(k); err != nil {
				return nil, err
			}
		}
	}
	return dropped, nil
}

// Versions returns the product's recorded versions in ascending serial order
// (none is not an error).
func (c *Cache) Versions(product string) ([]Version, error) {
	if err := validName("product", product); err != nil {
		return nil, err
	}
	var out []Version
	err := c.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVersions).Bucket([]byte(product))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, val []byte) error {
			var v Version
			if err := json.Unmarshal(val, &v); err != nil {
				return fmt.Errorf("version record %s/%x: %w (%w)", product, k, ErrCorrupt, err)
			}
			out = append(out, v)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("versions of %s: %w", product, err)
	}
	return out, nil
}

// LatestVersion returns the product's version with the highest serial, or
// [ErrNotFound].
func (c *Cache) LatestVersion(product string) (Version, error) {
	if err := validName("product", product); err != nil {
		return Version{}, err
	}
	var v Version
	err := c.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVersions).Bucket([]byte(product))
		var k, val []byte
		if b != nil {
			k, val = b.Cursor().Last()
		}
		if k == nil {
			return fmt.Errorf("latest version of %s: %w", product, ErrNotFound)
		}
		if err := json.Unmarshal(val, &v); err != nil {
			return fmt.Errorf("version record %s/%x: %w (%w)", product, k, ErrCorrupt, err)
		}
		return nil
	})
	return v, err
}

// Products returns the products that have recorded versions, sorted.
func (c *Cache) Products() ([]string, error) {
	var out []string
	err := c.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVersions).ForEachBucket(func(name []byte) error {
			if tx.Bucket(bucketVersions).Bucket(name).Stats().KeyN > 0 {
				out = append(out, string(name))
			}
			return nil
		})
	})
	return out, err
}

// DeleteVersion removes a version from the index (its blobs stay; see
// [Cache.Unreferenced]), or returns [ErrNotFound].
func (c *Cache) DeleteVersion(product, version string) error {
	if err := validName("product", product); err != nil {
		return err
	}
	if err := validName("version", version); err != nil {
		return err
	}
	return c.update(false, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVersions).Bucket([]byte(product))
		found := false
		if b != nil {
			var err error
			if found, err = deleteVersionTx(b, version); err != nil {
				return err
			}
		}
		if !found {
			return fmt.Errorf("delete version %s/%s: %w", product, version, ErrNotFound)
		}
		return nil
	})
}
