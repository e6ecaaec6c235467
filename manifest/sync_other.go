//go:build !linux

package manifest

import "os"

// syncFiles makes the data of files durable with a fsync of each (no
// syncfs(2) outside Linux).
func syncFiles(_ string, files []string) error {
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}
