// Package source is where updates come from: a vendor's HTTP or HTTPS
// server, an FTP server, a folder (a mounted share), or a distribution
// point over gRPC (plain or TLS). Every Source returns the repository's
// signed documents verbatim and a blob's bytes from an offset;
// verification is the caller's job (see package manifest), because nothing
// trusts a source. Parse turns a source URL into a Source:
//
//	http://[user:pass@]host[:port]/[prefix/]   https://...   (Options.CAFile adds a CA)
//	ftp://[user[:pass]@]host[:port]/[path/]    passive mode, REST to resume, anonymous without a user
//	file:///path, /path, ./path                a repository folder
//	grpc://host:port, grpcs://host:port        a distribution point
//
// A Chain tries sources in the order an administrator listed them, with a
// per-source timeout, a backoff for sources that failed, verification of
// documents, and blob transfers that resume at the byte reached, from the
// same or the next source, with the SHA-256 checked at the end. It logs
// which source served and why the others were skipped.
//
// # Proxies
//
// With Options.Proxy set, every http:// and https:// source whose host
// Options.NoProxy does not match goes through that proxy, loopback
// included (unlike Go's environment-based default, which never proxies
// loopback); https:// goes through a CONNECT tunnel. The proxy URL's user
// and password are sent as Basic Proxy-Authorization. Without
// Options.Proxy, the standard environment variables apply (HTTP_PROXY,
// HTTPS_PROXY, NO_PROXY), and NoProxy still sends matching hosts direct.
// A proxy that cannot be reached, refuses the credentials (407) or
// refuses a tunnel gives an error wrapping ErrProxy that names the proxy
// (password redacted), distinct from the origin's own errors.
//
// ftp:// sources never go through an HTTP proxy, and neither do grpc://
// and grpcs:// ones: they connect directly. Where only an HTTP proxy leads
// out, use an http(s):// source.
//
// # Credentials
//
// Passwords in source and proxy URLs are never shown: String, errors and
// logs use the URL with the password replaced by "xxxxx" (see Redact).
//
// # Caveats
//
// NoProxy compares host names as written in the URL and IP addresses
// literally: a name is never resolved to match a CIDR block.
//
// A blob read through a Chain from an offset above 0 is not hashed by the
// chain (it never saw the first bytes): the caller checks the digest over
// the whole file, as it must for any Source.
package source
