// Package pki is the site's small certificate authority and the DP's TLS
// identity: `dpcache ca init` and `dpcache ca issue` (InitCA, Issue), the
// role a certificate carries (Identify), and certificate and CA files that
// are re-read when they change on disk (KeyPair, CertPool).
//
// # Certificates
//
// A CA made by InitCA is an ECDSA P-256 key and a self-signed certificate
// valid for CAValidity (10 years), allowed to sign leaf certificates only
// (path length 0). Issue signs an ECDSA P-256 leaf valid for LeafValidity
// (1 year) whose subject is CN=name, OU=role, with a random 128-bit serial
// number. ECDSA P-256 is what every TLS stack and grpc-go accept.
//
//	role      key usage          extended key usage     SANs
//	dp        digital signature  server and client auth --host, else the name
//	endpoint  digital signature  client auth            --host, if given
//	admin     digital signature  client auth            --host, if given
//
// A DP dials its peers by their advertised address, so a dp certificate's
// --host must name that address (an IP address or a DNS name).
//
// The role is the subject's Organizational Unit so that `openssl x509
// -text` shows it and an enterprise PKI can issue the same certificates:
// any CA will do, as long as its leaves carry CN and OU that way.
//
// # Reloading
//
// KeyPair and CertPool hold what their files held at the last check. They
// look at the files' size and modification time at most once per
// CheckInterval, when a TLS handshake asks for them, and re-read them when
// either changed; Reload re-reads at once (a DP calls it on SIGHUP). A pair
// that cannot be loaded (the certificate was replaced but not the key yet)
// keeps the previous one in use and is tried again at the next check.
//
// # Concurrency
//
// Every method of KeyPair and CertPool is safe for concurrent use; the
// callbacks they provide to crypto/tls may run in many handshakes at once.
//
// # Caveats
//
// There is no revocation: a certificate stays valid until it expires or
// the CA is replaced. Keep leaf lifetimes short and the CA key offline.
package pki
