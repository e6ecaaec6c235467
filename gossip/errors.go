package gossip

import "errors"

// Errors returned by this package. They are wrapped with context; match them
// with errors.Is.
var (
	// ErrInvalidConfig: Config.Validate found a field it cannot use. The
	// message names the field and what it accepts.
	ErrInvalidConfig = errors.New("gossip: invalid config")

	// ErrClosed: the Gossip was closed (Close, or Run returned); create a new
	// one with New.
	ErrClosed = errors.New("gossip: closed")

	// ErrRunning: Run was called while another Run of the same Gossip had not
	// returned. Run once per Gossip.
	ErrRunning = errors.New("gossip: already running")

	// ErrJoin: no address given to Join could be reached (all failed, or
	// none was given). The wrapped message lists the failures.
	ErrJoin = errors.New("gossip: join failed")

	// ErrKeyFile: a key file cannot be used (too large, a line that is not
	// a base64 key of 16, 24 or 32 bytes, no key at all). The message names
	// the file and the line, never the line's text.
	ErrKeyFile = errors.New("gossip key file")

	// ErrNotEncrypted: SetKeys was called on a Gossip created without keys;
	// encryption is turned on only at start (Config.Keys).
	ErrNotEncrypted = errors.New("gossip: not encrypted; gossip keys are set at start")

	// errUntrusted: a member's certificate does not chain to the roots
	// (Config.Roots) or is not a dp certificate; it is dropped (logged).
	errUntrusted = errors.New("not trusted here")

	// errMalformed: a received message could not be decoded; it is dropped
	// (never returned to callers, only logged).
	errMalformed = errors.New("gossip: malformed message")
)
