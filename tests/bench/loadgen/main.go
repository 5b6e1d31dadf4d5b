// Command loadgen is the benchmark's load client and backend. It is written in Go so that load
// generation is never the bottleneck; the Python driver only starts processes and reads the JSON
// each subcommand prints on stdout.
//
// The backend reads one command byte per connection: 'E' echoes everything back, 'D' sends bytes as
// fast as the connection takes them (inside a TLS session when the client opens with one: tlsmix.go). Every client subcommand speaks that to one address, so the same
// binary measures direct loopback and every tunnel alike.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: loadgen backend|bulk|latency|connrate|mixed|idle|probe|dns [flags]")
	}
	cmd, args := os.Args[1], os.Args[2:]
	switch cmd {
	case "backend":
		backend(args)
	case "bulk":
		bulkCmd(args)
	case "latency":
		latencyCmd(args)
	case "connrate":
		connrate(args)
	case "mixed":
		mixed(args)
	case "idle":
		idle(args)
	case "probe":
		probe(args)
	case "dns":
		dnsCmd(args)
	default:
		fail("unknown subcommand " + cmd)
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "loadgen:", msg)
	os.Exit(2)
}

func emit(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		fail(err.Error())
	}
	os.Stdout.Write(append(b, '\n'))
}

// ---- backend ----

func backend(args []string) {
	fs := flag.NewFlagSet("backend", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	fs.Parse(args)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fail(err.Error())
	}
	emit(map[string]any{"port": ln.Addr().(*net.TCPAddr).Port})
	chunk := make([]byte, 128<<10)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and friends: back off, keep serving
			continue
		}
		go serve(c, chunk)
	}
}

func serve(raw net.Conn, chunk []byte) {
	defer raw.Close()
	c, err := maybeTLS(raw)
	if err != nil {
		return
	}
	defer c.Close()
	var op [1]byte
	if _, err := io.ReadFull(c, op[:]); err != nil {
		return
	}
	switch op[0] {
	case 'E':
		// A plain loop on purpose: io.Copy between TCP sockets splices through a pipe, which holds two
		// more descriptors per idle stream (10,000 idle streams would need 30,000).
		buf := make([]byte, 16<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	case 'D':
		go func() {
			// The client went away (EOF, including a half-close): stop sending, as a server would.
			io.Copy(io.Discard, c)
			c.Close()
		}()
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}
}

// ---- bulk ----

type bulkResult struct {
	Streams   int      `json:"streams"`
	OK        int      `json:"ok"`
	Bytes     int64    `json:"bytes"`
	Seconds   float64  `json:"seconds"`
	MBps      float64  `json:"mbps"`
	PerStream []int64  `json:"per_stream"`
	Errors    []string `json:"errors,omitempty"`
}

// runBulk downloads on `streams` connections for warmup+duration and counts the bytes of the
// measured window only.
func runBulk(addr string, streams int, warmup, duration time.Duration) bulkResult {
	res := bulkResult{Streams: streams, PerStream: make([]int64, streams)}
	var counting atomic.Bool
	var mu sync.Mutex
	var wg sync.WaitGroup
	stop := make(chan struct{})
	conns := make([]net.Conn, streams)
	for i := 0; i < streams; i++ {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			res.Errors = append(res.Errors, err.Error())
			continue
		}
		conns[i] = c
		if _, err := c.Write([]byte{'D'}); err != nil {
			res.Errors = append(res.Errors, err.Error())
			continue
		}
		wg.Add(1)
		go func(i int, c net.Conn) {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			var n int64
			got := false
			for {
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				k, err := c.Read(buf)
				if k > 0 {
					got = true
				}
				if counting.Load() {
					n += int64(k)
				}
				if err != nil {
					select {
					case <-stop:
					default:
						mu.Lock()
						res.Errors = append(res.Errors, err.Error())
						mu.Unlock()
					}
					break
				}
			}
			mu.Lock()
			res.PerStream[i] = n
			if got && n > 0 {
				res.OK++
			}
			mu.Unlock()
		}(i, c)
	}
	time.Sleep(warmup)
	counting.Store(true)
	t0 := time.Now()
	time.Sleep(duration)
	counting.Store(false)
	res.Seconds = time.Since(t0).Seconds()
	close(stop)
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	wg.Wait()
	for _, n := range res.PerStream {
		res.Bytes += n
	}
	res.MBps = float64(res.Bytes) / res.Seconds / 1e6
	return res
}

func bulkCmd(args []string) {
	fs := flag.NewFlagSet("bulk", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port")
	streams := fs.Int("streams", 1, "parallel streams")
	warmup := fs.Duration("warmup", 500*time.Millisecond, "not counted")
	duration := fs.Duration("duration", 3*time.Second, "measured window")
	fs.Parse(args)
	emit(runBulk(*addr, *streams, *warmup, *duration))
}

// ---- latency ----

type latencyResult struct {
	Rate   float64     `json:"rate"`
	Sent   int         `json:"sent"`
	P50    float64     `json:"p50_ms"`
	P90    float64     `json:"p90_ms"`
	P99    float64     `json:"p99_ms"`
	Max    float64     `json:"max_ms"`
	Errors []string    `json:"errors,omitempty"`
	Bulk   *bulkResult `json:"bulk,omitempty"`
}

func pct(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted)-1) + 0.5)
	return sorted[i]
}

// Requests are sent on a fixed schedule. A request sent late (because the previous answer was late) is
// measured from its scheduled time, so a stall counts against every request it delays (no coordinated
// omission); one sent on time is measured from its actual send.
func runLatency(addr string, rate float64, duration time.Duration, size int) latencyResult {
	res := latencyResult{Rate: rate}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		res.Errors = append(res.Errors, err.Error())
		return res
	}
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	msg := make([]byte, size)
	for i := range msg {
		msg[i] = 'a' + byte(i%26)
	}
	back := make([]byte, size)
	rt := func() error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(msg); err != nil {
			return err
		}
		_, err := io.ReadFull(c, back)
		return err
	}
	if _, err := c.Write([]byte{'E'}); err != nil {
		res.Errors = append(res.Errors, err.Error())
		return res
	}
	for i := 0; i < 20; i++ { // warm the path up
		if err := rt(); err != nil {
			res.Errors = append(res.Errors, err.Error())
			return res
		}
	}
	interval := time.Duration(float64(time.Second) / rate)
	n := int(duration.Seconds() * rate)
	lat := make([]float64, 0, n)
	start := time.Now()
	for i := 0; i < n; i++ {
		due := start.Add(time.Duration(i) * interval)
		from := due
		if d := time.Until(due); d > 0 {
			// On time: measure from the actual send, so the timer's own wake-up lag is not counted.
			time.Sleep(d)
			from = time.Now()
		}
		if err := rt(); err != nil {
			res.Errors = append(res.Errors, err.Error())
			break
		}
		lat = append(lat, float64(time.Since(from).Microseconds())/1000)
	}
	res.Sent = len(lat)
	sort.Float64s(lat)
	res.P50, res.P90, res.P99 = pct(lat, 50), pct(lat, 90), pct(lat, 99)
	if len(lat) > 0 {
		res.Max = lat[len(lat)-1]
	}
	return res
}

func latencyCmd(args []string) {
	fs := flag.NewFlagSet("latency", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port")
	rate := fs.Float64("rate", 200, "requests per second")
	duration := fs.Duration("duration", 3*time.Second, "measured window")
	size := fs.Int("size", 64, "request and response size")
	bulkStreams := fs.Int("bulk-streams", 0, "bulk download streams running meanwhile")
	fs.Parse(args)
	var bulk *bulkResult
	done := make(chan struct{})
	if *bulkStreams > 0 {
		go func() {
			// The bulk window covers the latency window: started first, it is in full flow by then.
			r := runBulk(*addr, *bulkStreams, 300*time.Millisecond, *duration+time.Second)
			bulk = &r
			close(done)
		}()
		time.Sleep(800 * time.Millisecond)
	} else {
		close(done)
	}
	res := runLatency(*addr, *rate, *duration, *size)
	<-done
	res.Bulk = bulk
	emit(res)
}

// ---- connrate ----

func connrate(args []string) {
	fs := flag.NewFlagSet("connrate", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port")
	duration := fs.Duration("duration", 2*time.Second, "measured window")
	workers := fs.Int("concurrency", 8, "parallel workers")
	useTLS := fs.Bool("tls", false, "a full TLS handshake with the backend's certificate (SNI "+TLSName+") per stream")
	fs.Parse(args)
	dial := func() (net.Conn, error) { return net.DialTimeout("tcp", *addr, 2*time.Second) }
	if *useTLS {
		dial = func() (net.Conn, error) { return dialTLS(*addr) }
	}
	var ok, bad atomic.Int64
	var mu sync.Mutex
	var lat []float64
	var firstErr string
	deadline := time.Now().Add(*duration)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []float64
			buf := []byte{'E', 'x'}
			one := make([]byte, 1)
			for time.Now().Before(deadline) {
				t := time.Now()
				err := func() error {
					c, err := dial()
					if err != nil {
						return err
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(2 * time.Second))
					if _, err := c.Write(buf); err != nil {
						return err
					}
					_, err = io.ReadFull(c, one)
					return err
				}()
				if err != nil {
					bad.Add(1)
					mu.Lock()
					if firstErr == "" {
						firstErr = err.Error()
					}
					mu.Unlock()
					time.Sleep(5 * time.Millisecond)
					continue
				}
				ok.Add(1)
				mine = append(mine, float64(time.Since(t).Microseconds())/1000)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	sort.Float64s(lat)
	emit(map[string]any{
		"ok": ok.Load(), "errors": bad.Load(), "first_error": firstErr, "seconds": secs,
		"per_sec": float64(ok.Load()) / secs, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
	})
}

// ---- idle ----

// idle opens n streams, proves each reaches the backend with one echo, reports, then holds them
// until stdin closes or says anything.
func idle(args []string) {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port")
	n := fs.Int("n", 10000, "streams to open")
	workers := fs.Int("concurrency", 32, "parallel openers")
	limit := fs.Duration("deadline", 60*time.Second, "stop opening after this long")
	fs.Parse(args)
	deadline := time.Now().Add(*limit)
	conns := make([]net.Conn, *n)
	var next, bad atomic.Int64
	var mu sync.Mutex
	var firstErr string
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			one := make([]byte, 1)
			for {
				i := int(next.Add(1) - 1)
				if i >= *n || time.Now().After(deadline) {
					return
				}
				// A stream that does not answer within 5 s (or by the deadline) counts as failed.
				due := time.Now().Add(5 * time.Second)
				if due.After(deadline) {
					due = deadline
				}
				c, err := net.DialTimeout("tcp", *addr, time.Until(due))
				if err == nil {
					c.SetDeadline(due)
					if _, err = c.Write([]byte{'E', 'p'}); err == nil {
						_, err = io.ReadFull(c, one)
					}
					c.SetDeadline(time.Time{})
				}
				if err != nil {
					bad.Add(1)
					mu.Lock()
					if firstErr == "" {
						firstErr = err.Error()
					}
					mu.Unlock()
					if c != nil {
						c.Close()
					}
					continue
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	ok := 0
	for _, c := range conns {
		if c != nil {
			ok++
		}
	}
	emit(map[string]any{
		"ok": ok, "errors": bad.Load(), "first_error": firstErr,
		"seconds": time.Since(start).Seconds(),
	})
	bufio.NewReader(os.Stdin).ReadString('\n')
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// ---- probe ----

// probe starts one end-to-end echo attempt every interval and prints one line per attempt, so the
// driver can see when an address stops and starts carrying traffic.
func probe(args []string) {
	fs := flag.NewFlagSet("probe", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port")
	interval := fs.Duration("interval", 10*time.Millisecond, "between attempts")
	timeout := fs.Duration("timeout", 1*time.Second, "per attempt")
	duration := fs.Duration("duration", 20*time.Second, "total")
	fs.Parse(args)
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	stop := make(chan struct{})
	go func() {
		bufio.NewReader(os.Stdin).ReadString('\n')
		close(stop)
	}()
	var wg sync.WaitGroup
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	end := time.After(*duration)
loop:
	for {
		select {
		case <-stop:
			break loop
		case <-end:
			break loop
		case <-tick.C:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			stage := "dial"
			c, err := net.DialTimeout("tcp", *addr, *timeout)
			if err == nil {
				stage = "echo"
				c.SetDeadline(t0.Add(*timeout))
				one := make([]byte, 1)
				if _, err = c.Write([]byte{'E', 'p'}); err == nil {
					if _, err = io.ReadFull(c, one); err == nil {
						stage = "ok"
					}
				}
				c.Close()
			}
			t1 := time.Now()
			mu.Lock()
			fmt.Fprintf(out, "{\"start\":%d,\"end\":%d,\"stage\":%q}\n", t0.UnixNano(), t1.UnixNano(), stage)
			mu.Unlock()
		}()
	}
	wg.Wait()
	out.Flush()
}
