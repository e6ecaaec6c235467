package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/dpcache/dpcache/gossip"
)

// keyFilePoll is how often the gossip key file is checked for a change.
const keyFilePoll = 2 * time.Second

// keyFile keeps the gossip keyring in step with Config.GossipKeyFile: read
// at start, and again when the file changes (polled) or Reload is called.
// A file that cannot be used leaves the keys in use.
type keyFile struct {
	path string
	log  *slog.Logger

	// mu serializes reads and protects the fields below.
	mu     sync.Mutex
	g      *gossip.Gossip // set once the gossip member exists
	seen   fileStamp      // the file as last read, used or refused
	warned fs.FileMode    // the loose permissions last warned about
}

// fileStamp tells a changed file from the one last read.
type fileStamp struct {
	mod  time.Time
	size int64
	mode fs.FileMode
}

func newKeyFile(path string, log *slog.Logger) *keyFile {
	return &keyFile{path: path, log: log}
}

// load reads the keys at start; the file must be usable.
func (k *keyFile) load() ([][]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	keys, err := k.readLocked()
	if err != nil {
		return nil, err
	}
	k.log.Info("gossip encrypted", "key_file", k.path, "keys", len(keys), "primary", gossip.KeyFingerprint(keys[0]))
	return keys, nil
}

// use hands the keys' later changes to g.
func (k *keyFile) use(g *gossip.Gossip) {
	k.mu.Lock()
	k.g = g
	k.mu.Unlock()
}

// reload reads the file and applies its keys. Unless force, it does nothing
// when the file looks as it did at the last read. An error (also logged)
// leaves the keys in use.
func (k *keyFile) reload(force bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.g == nil {
		return nil
	}
	if !force {
		st, _ := stampOf(k.path) // a file that cannot be stat'ed: the zero stamp, reported once
		if st == k.seen {
			return nil
		}
	}
	keys, err := k.readLocked()
	if err == nil {
		err = k.g.SetKeys(keys)
	}
	if err != nil {
		k.log.Error("gossip key file not applied; keeping the keys in use", "key_file", k.path, "err", err)
		return err
	}
	if force {
		k.log.Info("gossip key file read", "key_file", k.path, "keys", len(keys), "primary", gossip.KeyFingerprint(keys[0]))
	}
	return nil
}

// readLocked stats and reads the file, remembers how it looked, and warns
// when group or others may read it.
func (k *keyFile) readLocked() ([][]byte, error) {
	// Stat before reading: a change after the stat is seen at the next poll.
	st, err := stampOf(k.path)
	k.seen = st
	if err != nil {
		return nil, err
	}
	if loose := st.mode.Perm() & 0o077; loose != 0 && runtime.GOOS != "windows" {
		if loose != k.warned {
			k.log.Warn("gossip key file is readable by others than its owner; make it private: chmod 600 "+k.path,
				"key_file", k.path, "mode", st.mode.Perm().String())
		}
		k.warned = loose
	} else {
		k.warned = 0
	}
	return gossip.ReadKeyFile(k.path)
}

// stampOf stats path.
func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fileStamp{}, fmt.Errorf("gossip key file %s: %w", path, err)
	}
	return fileStamp{mod: fi.ModTime(), size: fi.Size(), mode: fi.Mode()}, nil
}

// watch reloads the file whenever it changes, until ctx ends.
func (k *keyFile) watch(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = k.reload(false) // logged
		}
	}
}
