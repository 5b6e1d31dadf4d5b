package main

// HTTPS new connections (real TLS handshakes, end to end) and the mixed load (many small request
// streams plus a few bulk ones). The backend answers TLS on the same port as plain TCP: a first byte of
// 0x16 (a TLS handshake record) gets a TLS server with the certificate below, then the same one-byte
// commands inside the TLS session.

import (
	"bufio"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"io"
	"math/big"
	"math/rand"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// TLSName is the name the backend's certificate carries and the TLS client asks for (SNI), so an SNI
// router (mproxy's tls listener) routes on it.
const TLSName = "bench.test"

// benchCert is the backend's self-signed certificate. Ed25519 signatures are deterministic, so the
// backend and every client build the same bytes from a fixed seed and template: the client trusts exactly
// that certificate (a real verification) without any file passed between processes. A benchmark key,
// never a secret.
func benchCert() (tls.Certificate, *x509.CertPool) {
	seed := make([]byte, ed25519.SeedSize)
	copy(seed, "mproxy bench backend, not secret")
	key := ed25519.NewKeyFromSeed(seed)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: TLSName},
		DNSNames:              []string{TLSName},
		NotBefore:             time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, key.Public(), key)
	if err != nil {
		fail("bench certificate: " + err.Error())
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		fail("bench certificate: " + err.Error())
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

var serverTLS = sync.OnceValue(func() *tls.Config {
	cert, _ := benchCert()
	return &tls.Config{Certificates: []tls.Certificate{cert}}
})

var clientTLS = sync.OnceValue(func() *tls.Config {
	_, pool := benchCert()
	// No session cache: every connection is a full handshake, as a new visitor's is.
	return &tls.Config{RootCAs: pool, ServerName: TLSName}
})

// peeked replays the bytes a bufio.Reader already read before the rest of the connection.
type peeked struct {
	net.Conn
	r *bufio.Reader
}

func (p peeked) Read(b []byte) (int, error) { return p.r.Read(b) }

// maybeTLS returns the connection to serve: a TLS server session when the client opens with a TLS
// handshake record, else the connection itself (with its first byte still to read).
func maybeTLS(c net.Conn) (net.Conn, error) {
	r := bufio.NewReaderSize(c, 1)
	first, err := r.Peek(1)
	if err != nil {
		return nil, err
	}
	pc := peeked{c, r}
	if first[0] != 0x16 {
		return pc, nil
	}
	s := tls.Server(pc, serverTLS())
	s.SetDeadline(time.Now().Add(10 * time.Second))
	if err := s.Handshake(); err != nil {
		return nil, err
	}
	s.SetDeadline(time.Time{})
	return s, nil
}

func dialTLS(addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 2 * time.Second}
	return tls.DialWithDialer(d, "tcp", addr, clientTLS())
}

// ---- mixed ----

// mixed opens `small` echo streams and `bulk` download streams at once through one address, then for
// `duration` sends a 64-byte request on the small streams at `rate` requests/s in total (each stream in
// turn, from its scheduled time: no coordinated omission) and reports the small requests' latency.
func mixed(args []string) {
	fs := flag.NewFlagSet("mixed", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port")
	small := fs.Int("small", 996, "small request/response streams")
	bulkN := fs.Int("bulk", 4, "bulk download streams")
	rate := fs.Float64("rate", 2000, "small requests per second, all streams together")
	duration := fs.Duration("duration", 2*time.Second, "measured window")
	fs.Parse(args)

	conns := make([]net.Conn, 0, *small)
	var firstErr string
	for i := 0; i < *small; i++ {
		c, err := net.DialTimeout("tcp", *addr, 5*time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = c.Write([]byte{'E', 'x'})
			one := make([]byte, 1)
			if err == nil {
				_, err = io.ReadFull(c, one)
			}
			c.SetDeadline(time.Time{})
		}
		if err != nil {
			if firstErr == "" {
				firstErr = "opening small streams: " + err.Error()
			}
			if c != nil {
				c.Close()
			}
			continue
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if len(conns) == 0 {
		emit(map[string]any{"ok": 0, "first_error": firstErr})
		return
	}
	// The bulk streams run from now until the window ends (the opening above is not measured).
	var bulkRes bulkResult
	bulkDone := make(chan struct{})
	go func() {
		bulkRes = runBulk(*addr, *bulkN, 300*time.Millisecond, *duration)
		close(bulkDone)
	}()
	time.Sleep(300 * time.Millisecond)

	per := time.Duration(float64(time.Second) * float64(len(conns)) / *rate) // each stream's interval
	start := time.Now()
	end := start.Add(*duration)
	var mu sync.Mutex
	lat := make([]float64, 0, int((*rate)*duration.Seconds())+16)
	var errs atomic.Int64
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func(i int, c net.Conn) {
			defer wg.Done()
			req := make([]byte, 64)
			got := make([]byte, 64)
			rand.New(rand.NewSource(int64(i))).Read(req)
			var mine []float64
			next := start.Add(time.Duration(int64(per) * int64(i) / int64(len(conns))))
			for next.Before(end) {
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				_, err := c.Write(req)
				if err == nil {
					_, err = io.ReadFull(c, got)
				}
				if err != nil {
					errs.Add(1)
					mu.Lock()
					if firstErr == "" {
						firstErr = "small request: " + err.Error()
					}
					mu.Unlock()
					return
				}
				mine = append(mine, float64(time.Since(next).Microseconds())/1000)
				next = next.Add(per)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}(i, c)
	}
	wg.Wait()
	<-bulkDone
	sort.Float64s(lat)
	emit(map[string]any{
		"ok": len(lat), "streams": len(conns), "errors": errs.Load(), "first_error": firstErr,
		"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": pct(lat, 100),
		"bulk_mbps": bulkRes.MBps, "bulk_ok": bulkRes.OK,
	})
}
