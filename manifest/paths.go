package manifest

// Repository layout (docs/design.md). Paths are slash-separated and relative to
// the repository root; join them to a URL or, after filepath.FromSlash, to a
// folder. The functions do not validate their arguments: check names with
// ValidName and digests with ParseDigest first when they come from outside.

const (
	// LatestName is the file name of a product's pointer document.
	LatestName = "latest.json"
	// ManifestName is the file name of a version's file list.
	ManifestName = "manifest.json"
	// SigSuffix is appended to a document's path to name its signature.
	SigSuffix = ".minisig"
	// BlobDir is the folder, relative to the root, that holds the blobs.
	BlobDir = "blobs/sha256"
)

// LatestPath returns "<product>/latest.json".
func LatestPath(product string) string { return product + "/" + LatestName }

// ManifestPath returns "<product>/<version>/manifest.json".
func ManifestPath(product, version string) string {
	return product + "/" + version + "/" + ManifestName
}

// SigPath returns the path of docPath's minisign signature, docPath +
// ".minisig".
func SigPath(docPath string) string { return docPath + SigSuffix }

// BlobPath returns "blobs/sha256/<digest>".
func BlobPath(digest string) string { return BlobDir + "/" + digest }
