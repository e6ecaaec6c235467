package pki

import (
	"crypto/x509"
	"fmt"
	"slices"
)

// Role is what a certificate's holder may do, carried as the subject's
// Organizational Unit.
type Role string

// The roles of DESIGN.md "Trust on a hostile network".
const (
	// RoleDP is a distribution point: it serves endpoints and its peers
	// and calls its peers' AdminService.
	RoleDP Role = "dp"
	// RoleEndpoint is an endpoint: it updates from DPs and reports its
	// status under its own name.
	RoleEndpoint Role = "endpoint"
	// RoleAdmin is an administrator: AdminService, the status page and
	// /metrics.
	RoleAdmin Role = "admin"
)

// Roles lists every role, in the order help texts show them.
var Roles = []Role{RoleDP, RoleEndpoint, RoleAdmin}

// ParseRole returns the role named s, or an error wrapping ErrBadRole.
func ParseRole(s string) (Role, error) {
	if slices.Contains(Roles, Role(s)) {
		return Role(s), nil
	}
	return "", fmt.Errorf("role %q: %w: want dp, endpoint or admin", s, ErrBadRole)
}

// Identify returns the holder's name (the subject's common name) and role
// (the first Organizational Unit that names a role; "" when none does).
// It trusts cert as given: call it on a verified chain's leaf only.
func Identify(cert *x509.Certificate) (name string, role Role) {
	for _, ou := range cert.Subject.OrganizationalUnit {
		if r, err := ParseRole(ou); err == nil {
			role = r
			break
		}
	}
	return cert.Subject.CommonName, role
}
