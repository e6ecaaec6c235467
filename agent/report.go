package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dpcache/dpcache/source"
)

// Report sends the outcome of a run to the sources of cfg that accept
// status reports (source.Reporter, a distribution point): first the one
// that served res, then the others in order, stopping at the first that
// accepts it. res is the run's result (nil for a failed run) and runErr its
// error; the reported version is res's, or what is installed when the run
// failed. The CLI calls it after Rollback; Update calls it itself.
//
// Report returns nil when no source accepts reports. Each attempt is
// bounded by cfg.ReportTimeout, and runs even if ctx is already done
// (a report of a cancelled run is still useful).
func Report(ctx context.Context, cfg Config, res *Result, runErr error) error {
	st := source.Status{
		ID:       cfg.EndpointID,
		Hostname: cfg.Hostname,
		Site:     cfg.Site,
		Product:  cfg.Product,
		Reported: time.Now().UTC(),
	}
	served := ""
	switch {
	case runErr != nil:
		st.Result = StatusFailed
		st.Error = runErr.Error()
		if m, err := Installed(cfg.Dir, cfg.Product); err == nil {
			st.Version, st.Serial = m.Version, m.Serial
		}
	case res != nil:
		st.Result = res.Status
		st.Version, st.Serial = res.Version, res.Serial
		served = res.Source
	default:
		return nil
	}

	var reporters []source.Reporter
	var names []string
	for _, s := range cfg.Sources {
		r, ok := s.(source.Reporter)
		if !ok {
			continue
		}
		if s.String() == served {
			reporters = append([]source.Reporter{r}, reporters...)
			names = append([]string{s.String()}, names...)
		} else {
			reporters = append(reporters, r)
			names = append(names, s.String())
		}
	}
	timeout := cfg.ReportTimeout
	if timeout <= 0 {
		timeout = DefaultConfig().ReportTimeout
	}
	var errs []error
	for i, r := range reporters {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		err := r.ReportStatus(rctx, st)
		cancel()
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", names[i], err))
	}
	if len(errs) > 0 {
		return fmt.Errorf("status report: %w", errors.Join(errs...))
	}
	return nil
}
