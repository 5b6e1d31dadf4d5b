package main

// The UDP client: DNS A queries (h.bench.test, answered by dnsmasq) from one connected socket, so every
// tunnel carries them as one UDP client. Two modes:
//   -rate 0: one query at a time (the next once the answer came, or after -timeout): round-trip p50/p99;
//   -rate R: R queries/s on a fixed schedule for -duration, answers read meanwhile, then -grace for the
//            last ones: answers/s, loss = 1 - answered / sent, and p50/p99 of the answered ones.
// A datagram is an answer only when its id matches a query and it carries QR, NOERROR and an answer RR.

import (
	"encoding/binary"
	"flag"
	"net"
	"sort"
	"sync"
	"time"
)

type dnsResult struct {
	Rate     float64  `json:"rate"`
	Sent     int      `json:"sent"`
	Answered int      `json:"answered"`
	Timeouts int      `json:"timeouts"`
	PerSec   float64  `json:"per_sec"`
	LossPct  float64  `json:"loss_pct"`
	P50      float64  `json:"p50_ms"`
	P99      float64  `json:"p99_ms"`
	Errors   []string `json:"errors,omitempty"`
}

var dnsName = []byte("\x01h\x05bench\x04test\x00")

func dnsQuery(id uint16) []byte {
	q := make([]byte, 12, 12+len(dnsName)+4)
	binary.BigEndian.PutUint16(q[0:], id)
	binary.BigEndian.PutUint16(q[2:], 0x0100) // RD
	binary.BigEndian.PutUint16(q[4:], 1)      // QDCOUNT
	q = append(q, dnsName...)
	return append(q, 0, 1, 0, 1) // A, IN
}

// dnsAnswer returns the id of a well-formed positive answer, or false.
func dnsAnswer(b []byte) (uint16, bool) {
	if len(b) < 12 {
		return 0, false
	}
	flags := binary.BigEndian.Uint16(b[2:])
	if flags&0x8000 == 0 || flags&0x000f != 0 || binary.BigEndian.Uint16(b[6:]) == 0 {
		return 0, false
	}
	return binary.BigEndian.Uint16(b[0:]), true
}

func dialUDP(addr string) (*net.UDPConn, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	c, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return nil, err
	}
	_ = c.SetReadBuffer(4 << 20) // a client that reads late must not be where the loss is
	return c, nil
}

func msSorted(lat []time.Duration) []float64 {
	out := make([]float64, len(lat))
	for i, d := range lat {
		out[i] = float64(d) / 1e6
	}
	sort.Float64s(out)
	return out
}

func dnsSequential(addr string, duration, timeout time.Duration) dnsResult {
	res := dnsResult{}
	c, err := dialUDP(addr)
	if err != nil {
		res.Errors = append(res.Errors, err.Error())
		return res
	}
	defer c.Close()
	buf := make([]byte, 4096)
	var lat []time.Duration
	end := time.Now().Add(duration)
	for id := uint16(1); time.Now().Before(end); id++ {
		start := time.Now()
		if _, err := c.Write(dnsQuery(id)); err != nil {
			res.Errors = append(res.Errors, err.Error())
			break
		}
		res.Sent++
		c.SetReadDeadline(start.Add(timeout))
		for {
			n, err := c.Read(buf)
			if err != nil {
				res.Timeouts++
				break
			}
			if got, ok := dnsAnswer(buf[:n]); ok && got == id {
				lat = append(lat, time.Since(start))
				res.Answered++
				break
			}
		}
	}
	res.summarize(lat, duration)
	return res
}

// summarize fills in the percentiles, the answer rate over `duration` and the loss from the latencies
// of the answered queries.
func (res *dnsResult) summarize(lat []time.Duration, duration time.Duration) {
	ms := msSorted(lat)
	res.P50, res.P99 = pct(ms, 50), pct(ms, 99)
	res.PerSec = float64(res.Answered) / duration.Seconds()
	if res.Sent > 0 {
		res.LossPct = 100 * float64(res.Sent-res.Answered) / float64(res.Sent)
	}
}

func dnsAtRate(addr string, rate float64, duration, grace time.Duration) dnsResult {
	res := dnsResult{Rate: rate}
	c, err := dialUDP(addr)
	if err != nil {
		res.Errors = append(res.Errors, err.Error())
		return res
	}
	defer c.Close()
	// Ids wrap at 65,536; the latest send of each id is what its answer is timed against.
	var mu sync.Mutex
	var sentAt [65536]time.Time
	var answered [65536]bool
	var lat []time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return // the deadline after the grace period
			}
			now := time.Now()
			id, ok := dnsAnswer(buf[:n])
			if !ok {
				continue
			}
			mu.Lock()
			if !sentAt[id].IsZero() && !answered[id] {
				answered[id] = true
				lat = append(lat, now.Sub(sentAt[id]))
				res.Answered++
			}
			mu.Unlock()
		}
	}()
	start := time.Now()
	for {
		elapsed := time.Since(start)
		if elapsed >= duration {
			break
		}
		due := int(elapsed.Seconds() * rate)
		for res.Sent < due {
			id := uint16(res.Sent)
			mu.Lock()
			sentAt[id], answered[id] = time.Now(), false
			mu.Unlock()
			if _, err := c.Write(dnsQuery(id)); err != nil && len(res.Errors) < 5 {
				res.Errors = append(res.Errors, err.Error()) // ECONNREFUSED from a port gone: counted as lost
			}
			res.Sent++
		}
		time.Sleep(time.Millisecond)
	}
	c.SetReadDeadline(time.Now().Add(grace))
	<-done
	mu.Lock()
	defer mu.Unlock()
	res.summarize(lat, duration)
	return res
}

func dnsCmd(args []string) {
	fs := flag.NewFlagSet("dns", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port of a DNS server (udp)")
	rate := fs.Float64("rate", 0, "queries per second on a fixed schedule; 0: one at a time")
	duration := fs.Duration("duration", 3*time.Second, "measured window")
	timeout := fs.Duration("timeout", time.Second, "sequential mode: wait this long for each answer")
	grace := fs.Duration("grace", time.Second, "rate mode: wait this long after the window for answers")
	fs.Parse(args)
	if *rate > 0 {
		emit(dnsAtRate(*addr, *rate, *duration, *grace))
	} else {
		emit(dnsSequential(*addr, *duration, *timeout))
	}
}
