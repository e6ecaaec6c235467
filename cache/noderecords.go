package cache

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The distribution point's own records, kept in record buckets (see the
// layout in doc.go) behind typed methods, so that the schema lives here:
//
//	records/manifests  product/version -> empty: the manifests the cache holds
//	records/published  product/version -> JSON Published: publication times of dropped versions
//	records/endpoints  endpoint/product -> an endpoint's last report (opaque bytes)
const (
	recManifests = "manifests"
	recPublished = "published"
	recEndpoints = "endpoints"
)

// VersionRef names one version of a product.
type VersionRef struct {
	Product, Version string
}

// PutManifest stores a version's signed manifest under its repository path
// and records that the cache holds it, in one transaction: after a crash
// either both are there or neither is.
func (c *Cache) PutManifest(product, version, path string, data, sig []byte) error {
	key := product + "/" + version
	if err := validKey("manifest", key); err != nil {
		return err
	}
	if err := validKey("document path", path); err != nil {
		return err
	}
	err := c.update(false, func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketDocs).Put([]byte(path), encodeDocument(data, sig)); err != nil {
			return err
		}
		b, err := tx.Bucket(bucketRecords).CreateBucketIfNotExists([]byte(recManifests))
		if err != nil {
			return err
		}
		return b.Put([]byte(key), nil)
	})
	if err != nil {
		return fmt.Errorf("put manifest %s: %w", key, err)
	}
	return nil
}

// Manifests returns the versions whose manifests PutManifest recorded, in
// key order (product, then version name).
func (c *Cache) Manifests() ([]VersionRef, error) {
	var out []VersionRef
	err := c.Records(recManifests, func(key string, _ []byte) error {
		if product, version, ok := strings.Cut(key, "/"); ok {
			out = append(out, VersionRef{product, version})
		}
		return nil
	})
	return out, err
}

// DeleteManifest forgets that the cache holds a version's manifest and
// deletes the documents at paths (its manifest, the latest.json that
// announced it), in one transaction. Missing documents are not an error.
func (c *Cache) DeleteManifest(product, version string, paths ...string) error {
	key := product + "/" + version
	if err := validKey("manifest", key); err != nil {
		return err
	}
	for _, p := range paths {
		if err := validKey("document path", p); err != nil {
			return err
		}
	}
	err := c.update(false, func(tx *bolt.Tx) error {
		for _, p := range paths {
			if err := tx.Bucket(bucketDocs).Delete([]byte(p)); err != nil {
				return err
			}
		}
		if b := tx.Bucket(bucketRecords).Bucket([]byte(recManifests)); b != nil {
			return b.Delete([]byte(key))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete manifest %s: %w", key, err)
	}
	return nil
}

// Published is what is kept of a version after its manifest is dropped:
// enough to date the endpoints that still run it.
type Published struct {
	Version   string    `json:"version"`
	Serial    uint64    `json:"serial"`
	Published time.Time `json:"published"`
}

// PublishedRecord is a Published and its product.
type PublishedRecord struct {
	Product string
	Published
}

// PutPublished keeps the publication time of one of product's versions.
func (c *Cache) PutPublished(product string, p Published) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("put published %s/%s: %w", product, p.Version, err)
	}
	return c.PutRecord(recPublished, product+"/"+p.Version, b)
}

// PublishedVersions returns what PutPublished kept, in key order. An
// unreadable record is logged and left out.
func (c *Cache) PublishedVersions() ([]PublishedRecord, error) {
	var out []PublishedRecord
	err := c.Records(recPublished, func(key string, value []byte) error {
		product, _, ok := strings.Cut(key, "/")
		var p Published
		if !ok || json.Unmarshal(value, &p) != nil {
			c.log.Warn("ignoring an unreadable publication record", "key", key)
			return nil
		}
		out = append(out, PublishedRecord{product, p})
		return nil
	})
	return out, err
}

// PutEndpointReport keeps an endpoint's last report for product (opaque
// bytes: the node encodes them), replacing the previous one. With limit >
// 0, at most limit endpoint/product pairs are kept: a new pair past it is
// refused with ErrFull, and the pairs kept still update.
func (c *Cache) PutEndpointReport(endpoint, product string, report []byte, limit int) error {
	if endpoint == "" || product == "" {
		return fmt.Errorf("endpoint report %q/%q: %w", endpoint, product, ErrInvalid)
	}
	key := endpoint + "/" + product
	if err := validKey("record key", key); err != nil {
		return err
	}
	err := c.update(false, func(tx *bolt.Tx) error {
		b, err := tx.Bucket(bucketRecords).CreateBucketIfNotExists([]byte(recEndpoints))
		if err != nil {
			return err
		}
		if limit > 0 && b.Get([]byte(key)) == nil && b.Stats().KeyN >= limit {
			return fmt.Errorf("%d endpoint reports kept already: %w", limit, ErrFull)
		}
		return b.Put([]byte(key), report)
	})
	if err != nil {
		return fmt.Errorf("endpoint report %s: %w", key, err)
	}
	return nil
}

// EndpointReports calls fn with each report PutEndpointReport kept, keyed
// endpoint/product, in key order, after the read transaction has ended.
// An error from fn stops the iteration and is returned.
func (c *Cache) EndpointReports(fn func(key string, report []byte) error) error {
	return c.Records(recEndpoints, fn)
}

// encodeDocument is a document's stored form: the data's length as a
// uvarint, the data, the signature.
func encodeDocument(data, sig []byte) []byte {
	v := make([]byte, 0, binary.MaxVarintLen64+len(data)+len(sig))
	v = binary.AppendUvarint(v, uint64(len(data)))
	v = append(v, data...)
	return append(v, sig...)
}
