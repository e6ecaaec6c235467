// Package manifest owns dpcache's repository format: the signed documents
// (latest.json and manifest.json), their parsing and validation, minisign
// signatures, the repository's paths, key files, and publishing a version
// into a repository folder.
//
// # Repository layout
//
//	<root>/<product>/latest.json               pointer to the newest version
//	<root>/<product>/latest.json.minisig
//	<root>/<product>/<version>/manifest.json   one version's file list
//	<root>/<product>/<version>/manifest.json.minisig
//	<root>/blobs/sha256/<64 hex>                a file's bytes, named by their SHA-256
//
// LatestPath, ManifestPath, SigPath and BlobPath build these paths.
//
// # One vocabulary
//
// This package is the one place that says what a valid name and digest
// are; the other packages call it where a name or digest enters (a request,
// a gossip message, a cache entry point) instead of checking on their own:
// ValidName for product and version names, ParseDigest (a Digest) for
// SHA-256 digests, ValidPath for a manifest's file paths. WriteFileAtomic
// and SyncDir are the durable file writes every package that writes a
// repository or an installation uses.
//
// # Trust
//
// Documents are signed with minisign (ed25519) over their exact bytes, so a
// vendor may sign with the stock `minisign` tool, and keys made by
// GenerateKeyFiles work with it (the secret key is unencrypted, as with
// `minisign -G -W`). A Trust holds the public keys a client accepts;
// Trust.VerifyLatest and Trust.VerifyManifest verify a signature and then
// parse and validate the document, and VerifyManifest ties a manifest to
// the latest.json that named it by its SHA-256. Blobs need no signature:
// the manifest names them by digest, and readers check the digest.
//
// A published manifest.json never changes: caches, DPs and mirrors keep it
// by its path. Resign publishes a version again (a fresh expiry) with a new
// latest.json alone, under a higher serial, pinning the same manifest by
// its digest; so a manifest's serial is the one its version was first
// published under, never above its latest.json's.
//
// A client reads latest.json, verifies it, reads the manifest it names,
// verifies that, and fetches the blobs of the files it wants, checking
// each one's SHA-256. ValidPath guarantees that a manifest's paths, joined
// below an install directory, stay inside it.
//
// # Caveats
//
// latest.json and its signature are two files, replaced one after the
// other. Publish (and Resign) writes the signature first and the document last, so a
// reader that fetches latest.json before latest.json.minisig never pairs a
// new document with an old signature; for an instant it may pair the old
// document with the new signature and get ErrBadSignature. Readers should
// fetch the document first and retry once on ErrBadSignature.
//
// Parsing ignores unknown JSON fields, so that a newer publisher can add
// some; they stay covered by the signature.
//
// Publish is not safe for concurrent publishers of one product in one
// repository. It checks an existing blob by its size only; it does not
// re-hash blobs it reuses.
package manifest
