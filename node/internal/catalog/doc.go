// Package catalog is what a distribution point knows of products and
// versions, and the work that keeps them current: the sizes of the blobs
// verified manifests name (the DP fetches no other), which versions name
// each blob, the chunk lists of chunked files (which the DP serves whole,
// assembled), upstream's latest of each product, the refresh loop, the
// download task (Config.Products, inside Config.UpstreamWindow), version
// completions (fetch a version whole, then announce it), watches of a
// product's held latest, and the publication times endpoint ages are
// measured against.
//
// Signed documents come from the DP's document sources in order and the
// first copy that verifies wins (documents.go: firstVerified, used by
// upstreamLatest and ManifestDoc); a lower serial from upstream is ignored
// (a rollback attack).
//
// It consumes small interfaces it declares: Store (the cache), Blobs (the
// fetcher), Retention and DP (document sources, gossip).
//
// # Concurrency
//
// Every exported method is safe for concurrent use. Catalog.mu protects the
// known blob sizes, the versions naming each blob, the chunk lists, the
// products kept current, upstream's latest, the completions in flight, the
// watch channels, the publication times and the closed flag. It is never
// held while calling Store, Blobs, Retention or DP; callers must not call
// the Catalog while holding a lock the Catalog's consumers take (retain's
// pins call Protected with their lock held; the Catalog never calls the
// pins). A Job's own mu protects its blob list and progress.
package catalog
