package loadtest

import (
	"bytes"
	"sync"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// docs verifies and parses each distinct signed document once: thousands
// of endpoints receive the same few documents.
type docs struct {
	trust *manifest.Trust // nil: signatures not checked

	mu        sync.Mutex              // protects the fields below
	base      map[string]struct{}     // digests of the version endpoints start from; nil: none
	latests   map[string]*latestDoc   // by the document's bytes
	manifests map[string]*manifestDoc // by the document's bytes
}

type latestDoc struct {
	sig []byte
	l   *manifest.Latest
}

type manifestDoc struct {
	sig        []byte
	sha        string // of the document's bytes
	m          *manifest.Manifest
	fetch      []manifest.File // the blobs an endpoint lacks
	fetchBytes int64
}

func newDocs(trust *manifest.Trust) *docs {
	return &docs{trust: trust, latests: map[string]*latestDoc{}, manifests: map[string]*manifestDoc{}}
}

// setBase verifies the manifest of the version the endpoints start from
// and keeps its digests. It is called before any endpoint starts.
func (d *docs) setBase(s source.Signed) error {
	m, err := d.parseManifest(s)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.base = make(map[string]struct{}, len(m.Files))
	for _, f := range m.Files {
		d.base[f.SHA256] = struct{}{}
	}
	return nil
}

// latest returns the verified latest.json that s holds.
func (d *docs) latest(s source.Signed) (*manifest.Latest, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.latests[string(s.Data)]; ok && bytes.Equal(e.sig, s.Signature) {
		return e.l, nil
	}
	var l *manifest.Latest
	var err error
	if d.trust != nil {
		l, err = d.trust.VerifyLatest(s.Data, s.Signature)
	} else {
		l, err = manifest.ParseLatest(s.Data)
	}
	if err != nil {
		return nil, err
	}
	d.latests[string(s.Data)] = &latestDoc{sig: bytes.Clone(s.Signature), l: l}
	return l, nil
}

// manifest returns the verified manifest that s holds, which must be the
// one l names, with the blobs an endpoint lacks.
func (d *docs) manifest(s source.Signed, l *manifest.Latest) (*manifestDoc, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.manifests[string(s.Data)]
	if !ok || !bytes.Equal(e.sig, s.Signature) {
		m, err := d.parseManifest(s)
		if err != nil {
			return nil, err
		}
		e = &manifestDoc{sig: bytes.Clone(s.Signature), sha: manifest.SHA256Hex(s.Data), m: m}
		for _, f := range m.Blobs() {
			if _, have := d.base[f.SHA256]; !have {
				e.fetch = append(e.fetch, f)
				e.fetchBytes += f.Size
			}
		}
		d.manifests[string(s.Data)] = e
	}
	// Each endpoint may have been given another latest.json.
	if err := l.Names(e.m, e.sha); err != nil {
		return nil, err
	}
	return e, nil
}

// parseManifest verifies (with a Trust) and parses a manifest.
func (d *docs) parseManifest(s source.Signed) (*manifest.Manifest, error) {
	if d.trust != nil {
		return d.trust.VerifyManifest(s.Data, s.Signature, nil)
	}
	return manifest.ParseManifest(s.Data)
}
