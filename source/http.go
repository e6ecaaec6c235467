package source

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// HTTP is a repository served over HTTP or HTTPS by any static web server
// (nginx, a DP's /repo/, `dpcache serve`).
type HTTP struct {
	base   *url.URL // always ends in "/"
	name   string   // base without credentials
	client *http.Client
	ua     string
	proxy  func(*http.Request) (*url.URL, error)
	trust  string // what TLS trusts, for certificate errors
}

// NewHTTP returns a Source for the repository whose root is base. It
// reads opts.CAFile, if set, now; other errors wrap ErrBadOptions.
//
// Requests go through opts.Proxy as documented on Options; an https://
// source reached through a proxy uses a CONNECT tunnel, so the proxy sees
// the host name but not the content.
func NewHTTP(base *url.URL, opts Options) (*HTTP, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	b := *base
	if !strings.HasSuffix(b.Path, "/") {
		b.Path += "/"
	}
	b.RawQuery, b.Fragment = "", ""
	proxy, err := proxyFunc(opts)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := opts.tlsConfig()
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{
		Proxy:                  proxy,
		OnProxyConnectResponse: onProxyConnectResponse,
		DialContext: (&net.Dialer{
			Timeout:   opts.Timeout,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		TLSClientConfig:       tlsCfg,
		TLSHandshakeTimeout:   opts.Timeout,
		ResponseHeaderTimeout: opts.Timeout,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   16,
		// Blobs are already compressed or hashed byte for byte: never let
		// the transport decompress transparently.
		DisableCompression: true,
		ReadBufferSize:     256 << 10,
		WriteBufferSize:    64 << 10,
	}
	if tlsCfg != nil {
		// A custom TLSClientConfig turns HTTP/2 off unless asked for.
		tr.ForceAttemptHTTP2 = true
	}
	return &HTTP{
		base: &b, name: b.Redacted(), client: &http.Client{Transport: tr, CheckRedirect: checkRedirect},
		ua: opts.UserAgent, proxy: proxy, trust: opts.trustDescription(),
	}, nil
}

// maxRedirects bounds the redirects followed for one request.
const maxRedirects = 10

// checkRedirect follows at most maxRedirects redirects and never one from
// https to plain http: a man in the middle of the https hop must not move
// the transfer to where it can read and alter it (signatures would still
// catch a change, but the bytes and the update source would leak).
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects", maxRedirects)
	}
	for _, prev := range via {
		if prev.URL.Scheme == "https" && req.URL.Scheme != "https" {
			return fmt.Errorf("refused a redirect from https to %s (%s)", req.URL.Scheme, req.URL.Redacted())
		}
	}
	return nil
}

// String implements Source.
func (h *HTTP) String() string { return h.name }

// Close implements Source.
func (h *HTTP) Close() error {
	h.client.CloseIdleConnections()
	return nil
}

// Latest implements Source.
func (h *HTTP) Latest(ctx context.Context, product string) (Signed, error) {
	rel, err := LatestPath(product)
	if err != nil {
		return Signed{}, err
	}
	return h.signed(ctx, rel)
}

// Manifest implements Source.
func (h *HTTP) Manifest(ctx context.Context, product, version string) (Signed, error) {
	rel, err := ManifestPath(product, version)
	if err != nil {
		return Signed{}, err
	}
	return h.signed(ctx, rel)
}

// maxDocument bounds a signed document read into memory.
const maxDocument = 64 << 20

func (h *HTTP) signed(ctx context.Context, rel string) (Signed, error) {
	data, err := h.get(ctx, rel)
	if err != nil {
		return Signed{}, err
	}
	sig, err := h.get(ctx, rel+".minisig")
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Signed{}, err
	}
	return Signed{Data: data, Signature: sig, Source: h.name}, nil
}

func (h *HTTP) get(ctx context.Context, rel string) ([]byte, error) {
	resp, err := h.do(ctx, rel, 0)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxDocument+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %s: reading body: %w: %v", h, rel, ErrUnavailable, err)
	}
	if len(b) > maxDocument {
		return nil, fmt.Errorf("%s: %s: document larger than %d bytes: %w", h, rel, maxDocument, ErrDataLoss)
	}
	return b, nil
}

func (h *HTTP) do(ctx context.Context, rel string, offset int64) (*http.Response, error) {
	u := h.base.JoinPath(rel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w: %v", h, rel, ErrInvalid, err)
	}
	req.Header.Set("User-Agent", h.ua)
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	var proxy *url.URL
	if h.proxy != nil {
		proxy, _ = h.proxy(req) // an invalid environment proxy fails in Do
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, h.transportError(rel, proxy, err)
	}
	switch {
	case resp.StatusCode == http.StatusOK, resp.StatusCode == http.StatusPartialContent:
		return resp, nil
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		resp.Body.Close()
		// "bytes */N": asking at exactly the end is an empty read, as
		// for the other sources; past it, the source lacks the bytes.
		if total, ok := strings.CutPrefix(resp.Header.Get("Content-Range"), "bytes */"); ok && total == strconv.FormatInt(offset, 10) {
			resp.Body = http.NoBody
			resp.StatusCode = http.StatusPartialContent
			resp.Header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", offset, offset, offset))
			return resp, nil
		}
		return nil, fmt.Errorf("%s: %s: offset %d is past the end: %w", h, rel, offset, ErrDataLoss)
	case resp.StatusCode == http.StatusNotFound, resp.StatusCode == http.StatusGone:
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %s: %w (HTTP %d)", h, rel, ErrNotFound, resp.StatusCode)
	case resp.StatusCode == http.StatusProxyAuthRequired && proxy != nil:
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %s: %w: proxy %s refused the credentials (HTTP %s): check the user and password of the proxy URL",
			h, rel, ErrProxy, redactedProxy(proxy), resp.Status)
	case resp.StatusCode == http.StatusProxyAuthRequired:
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %s: the proxy refused the credentials (HTTP 407): %w", h, rel, ErrUnavailable)
	case proxy != nil && resp.Header.Get("X-Squid-Error") != "":
		// Squid marks the answers it makes itself (it could not reach the
		// origin, or refuses the destination).
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %s: %w: proxy %s answered HTTP %s, %s",
			h, rel, ErrProxy, redactedProxy(proxy), resp.Status, resp.Header.Get("X-Squid-Error"))
	case proxy != nil:
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %s: %w (HTTP %s, through proxy %s)", h, rel, ErrUnavailable, resp.Status, redactedProxy(proxy))
	default:
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %s: %w (HTTP %s)", h, rel, ErrUnavailable, resp.Status)
	}
}

// transportError explains a failed round trip: the proxy's fault (named,
// ErrProxy), an untrusted certificate, or the origin unreachable.
func (h *HTTP) transportError(rel string, proxy *url.URL, err error) error {
	err = stripURLError(err)
	if proxy != nil {
		var ce *connectError
		if errors.As(err, &ce) {
			status := "HTTP " + ce.status
			if ce.squid != "" {
				status += ", " + ce.squid
			}
			why := ""
			if ce.code == http.StatusProxyAuthRequired {
				why = ": check the user and password of the proxy URL"
			}
			return fmt.Errorf("%s: %s: %w: proxy %s refused the tunnel to %s (%s)%s",
				h, rel, ErrProxy, redactedProxy(proxy), h.base.Host, status, why)
		}
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "proxyconnect" {
			return fmt.Errorf("%s: %s: %w: proxy %s unreachable: %v", h, rel, ErrProxy, redactedProxy(proxy), oe.Err)
		}
	}
	via := ""
	if proxy != nil {
		via = " (through proxy " + redactedProxy(proxy) + ")"
	}
	var (
		unknownCA x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		verifyErr *tls.CertificateVerificationError
	)
	switch {
	case errors.As(err, &unknownCA), errors.As(err, &verifyErr) && !errors.As(err, &hostErr):
		return fmt.Errorf("%s: %s: %w: the server's TLS certificate is not signed by a CA trusted here (%s): %v%s",
			h, rel, ErrUnavailable, h.trust, err, via)
	case errors.As(err, &hostErr):
		return fmt.Errorf("%s: %s: %w: the server's TLS certificate does not name %s: %v%s",
			h, rel, ErrUnavailable, h.base.Hostname(), err, via)
	}
	return fmt.Errorf("%s: %s: %w: %v%s", h, rel, ErrUnavailable, err, via)
}

// Blob implements Source. A server that ignores Range (HTTP 200 to a
// request with an offset) is handled by skipping the first offset bytes.
func (h *HTTP) Blob(ctx context.Context, digest string, offset int64) (io.ReadCloser, error) {
	rel, err := BlobPath(digest)
	if err != nil {
		return nil, err
	}
	resp, err := h.do(ctx, rel, offset)
	if err != nil {
		return nil, err
	}
	if offset > 0 && resp.StatusCode == http.StatusOK {
		if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
			resp.Body.Close()
			return nil, fmt.Errorf("%s: %s: skipping to offset %d: %w: %v", h, rel, offset, ErrUnavailable, err)
		}
	}
	if offset > 0 && resp.StatusCode == http.StatusPartialContent {
		if start, ok := contentRangeStart(resp.Header.Get("Content-Range")); !ok || start != offset {
			resp.Body.Close()
			return nil, fmt.Errorf("%s: %s: asked for offset %d, got Content-Range %q: %w", h, rel, offset, resp.Header.Get("Content-Range"), ErrDataLoss)
		}
	}
	return &httpBody{rc: resp.Body, name: h.name, rel: rel}, nil
}

func contentRangeStart(v string) (int64, bool) {
	v, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, false
	}
	start, _, ok := strings.Cut(v, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(start, 10, 64)
	return n, err == nil
}

// httpBody names the source in read errors (a connection cut mid-body).
type httpBody struct {
	rc   io.ReadCloser
	name string
	rel  string
}

func (b *httpBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil && err != io.EOF {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("%s: %s: body cut short: %w", b.name, b.rel, io.ErrUnexpectedEOF)
		} else {
			err = fmt.Errorf("%s: %s: %w: %v", b.name, b.rel, ErrUnavailable, err)
		}
	}
	return n, err
}

func (b *httpBody) Close() error { return b.rc.Close() }
