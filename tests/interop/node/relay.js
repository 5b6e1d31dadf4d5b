'use strict';
// A small M-PROXY relay written with the reference codec (npm proxy-packer) and ws, framing real client
// TCP connections exactly like telebit-relay v0.20 does:
//   - on a tunnel WebSocket: sends the telebit hello (header and body as two binary messages), answers
//     add_token (and checks the token when one is configured: ?access_token=, Authorization or add_token);
//   - per client: `connection` header-only in its own message first, then each data chunk as two
//     messages (header, body), `end` header-only, `error` {message, code} as two messages; pause/resume
//     when the client socket has more than 1 MiB buffered (like telebit) and on drain, with the client's
//     serviceport and name and a JSON integer body (bytes written to that client so far);
//   - like telebit-relay, it never sends `end` back for a stream the device ended while the client
//     keeps its side open (a half-closed stream stays half-closed);
//   - from the device: data -> client socket, end -> socket.end(), error -> destroy, pause/resume -> the
//     client socket.
// Config: one JSON argument (or a path to a JSON file):
//   {"host":"127.0.0.1","wsPort":0,"token":null,"tls":null,
//    "listeners":[{"port":0,"service":"tcp","serviceport":22,"name":""}]}
// ("tls": {"cert": path, "key": path} serves the tunnel as wss://.)
// It prints JSON lines on stdout: {"event":"ready","wsPort":N,"listeners":[{"port":N,...}]}, and
// {"event":"tunnel","state":"open"|"closed",...}, {"event":"error",...}. Commands on stdin, one JSON a line:
//   {"cmd":"inject","hex":"fe00","tunnel":2}  raw bytes to one tunnel (or all) to test malformed input
//   {"cmd":"close_tunnels","code":1001}  close every tunnel WebSocket
//   {"cmd":"stats"}                      prints {"event":"stats",...}
// Used by tests/e2e/sidecar and as the "reference relay" baseline of tests/bench/dataplane_bench.py.

var net = require('net');
var fs = require('fs');
var readline = require('readline');
var WebSocket = require('ws');
var Packer = require('proxy-packer');

var arg = process.argv[2] || '{}';
var config = JSON.parse(arg.trim().charAt(0) === '{' ? arg : fs.readFileSync(arg, 'utf8'));
var host = config.host || '127.0.0.1';
var PAUSE_AT = config.pauseBytes || 1024 * 1024;

function emit(obj) {
	process.stdout.write(JSON.stringify(obj) + '\n');
}

var tunnels = [];
var rr = 0;
var stats = { clients: 0, tunnelsOpened: 0, bytesToDevice: 0, bytesFromDevice: 0, pausesSent: 0 };

function sendFrame(ws, addr, data, service) {
	// telebit-relay: header and body are two WebSocket messages. packHeader sizes an object body as its
	// JSON; send exactly those bytes.
	if (data && !Buffer.isBuffer(data)) {
		data = Buffer.from(JSON.stringify(data));
	}
	var header = Packer.packHeader(Object.assign({}, addr), data, service); // it sets meta.service
	ws.send(header, { binary: true });
	if (data && data.byteLength) {
		ws.send(data, { binary: true });
	}
}

function sendControl(ws, value) {
	var body = Buffer.from(JSON.stringify(value));
	ws.send(Packer.packHeader(null, body, 'control'), { binary: true });
	ws.send(body, { binary: true });
}

function tokenFromRequest(req) {
	var url = new URL(req.url, 'http://x');
	var q = url.searchParams.get('access_token');
	if (q) {
		return q;
	}
	var auth = req.headers.authorization || '';
	var m = /^Bearer\s+(.+)$/i.exec(auth);
	if (m) {
		return m[1];
	}
	m = /^Basic\s+(.+)$/i.exec(auth);
	if (m) {
		var decoded = Buffer.from(m[1], 'base64').toString();
		return decoded.slice(decoded.indexOf(':') + 1);
	}
	return null;
}

function Tunnel(ws, req) {
	var self = this;
	self.ws = ws;
	self.clients = {};
	self.authed = !config.token || tokenFromRequest(req) === config.token;
	self.id = ++stats.tunnelsOpened;
	self.machine = Packer.create({
		onmessage: function(msg) {
			var sock = self.clients[Packer.addrToId(msg)];
			if (!sock) {
				sendFrame(ws, msg, { message: 'no matching connection', code: 'E_NO_CONN' }, 'error');
				return;
			}
			stats.bytesFromDevice += msg.data ? msg.data.length : 0;
			if (msg.data && msg.data.length) {
				sock.write(msg.data);
				sock._mpTunnelRead = (sock._mpTunnelRead || 0) + msg.data.length;
				if (sock.writableLength > PAUSE_AT && !sock._mpPausedRemote) {
					sock._mpPausedRemote = true;
					stats.pausesSent += 1;
					// telebit-relay: the body is tunnelRead as JSON (bytes written to this client so far)
					sendFrame(ws, sock._mpAddr, Buffer.from(JSON.stringify(sock._mpTunnelRead)), 'pause');
					emit({ event: 'pause_sent', tunnel: self.id, client: Packer.addrToId(msg) });
				}
			}
		},
		oncontrol: function(msg) {
			var value;
			try {
				value = JSON.parse(msg.data.toString());
			} catch (e) {
				emit({ event: 'error', tunnel: self.id, message: 'bad control JSON' });
				return;
			}
			if (!Array.isArray(value)) {
				return;
			}
			if (value[0] > 0 && value[1] === 'add_token') {
				if (config.token && value[2] !== config.token) {
					sendControl(ws, [-value[0], { message: 'bad token', code: 'E_AUTH' }]);
					emit({ event: 'auth', tunnel: self.id, ok: false });
					return;
				}
				self.authed = true;
				sendControl(ws, [-value[0], null]);
				emit({ event: 'auth', tunnel: self.id, ok: true });
			} else if (value[0] > 0) {
				sendControl(ws, [-value[0], { message: 'unknown command', code: 'E_UNKNOWN_COMMAND' }]);
			} else if (value[0] < 0) {
				emit({ event: 'reply', tunnel: self.id, value: value });
			}
		},
		onend: function(msg) {
			var sock = self.clients[Packer.addrToId(msg)];
			if (sock) {
				sock.end();
			}
		},
		onerror: function(msg) {
			var id = Packer.addrToId(msg);
			var sock = self.clients[id];
			emit({ event: 'stream_error', tunnel: self.id, client: id, message: msg.message, code: msg.code });
			if (sock) {
				delete self.clients[id];
				sock.destroy();
			}
		},
		onpause: function(msg) {
			var sock = self.clients[Packer.addrToId(msg)];
			if (sock) {
				sock.pause();
				emit({ event: 'paused', tunnel: self.id, client: Packer.addrToId(msg) });
			}
		},
		onresume: function(msg) {
			var sock = self.clients[Packer.addrToId(msg)];
			if (sock) {
				sock.resume();
				emit({ event: 'resumed', tunnel: self.id, client: Packer.addrToId(msg) });
			}
		}
	});
	ws.on('message', function(data) {
		self.machine.fns.addChunk(Buffer.isBuffer(data) ? data : Buffer.from(data));
	});
	ws.on('close', function(code, reason) {
		var i = tunnels.indexOf(self);
		if (i >= 0) {
			tunnels.splice(i, 1);
		}
		Object.keys(self.clients).forEach(function(id) {
			self.clients[id].destroy();
		});
		emit({ event: 'tunnel', state: 'closed', tunnel: self.id, code: code, reason: reason.toString() });
	});
	ws.on('error', function(err) {
		emit({ event: 'error', tunnel: self.id, message: String(err && err.message) });
	});
	sendControl(ws, [1, 'hello', [1], ['add_token', 'delete_token', 'auth', 'authn', 'authz']]);
	tunnels.push(self);
	emit({ event: 'tunnel', state: 'open', tunnel: self.id, authed: self.authed });
}

function pickTunnel() {
	var ready = tunnels.filter(function(t) {
		return t.authed && t.ws.readyState === WebSocket.OPEN;
	});
	if (!ready.length) {
		return null;
	}
	rr = (rr + 1) % ready.length;
	return ready[rr];
}

function onClient(listener, sock) {
	var tunnel = pickTunnel();
	if (!tunnel) {
		sock.destroy();
		return;
	}
	stats.clients += 1;
	sock.setNoDelay(true);
	var ws = tunnel.ws;
	var addr = {
		family: sock.remoteFamily,
		address: sock.remoteAddress,
		port: sock.remotePort,
		service: listener.service,
		serviceport: listener.serviceport || sock.localPort,
		name: listener.name || ''
	};
	var id = Packer.addrToId(addr);
	sock._mpAddr = addr;
	tunnel.clients[id] = sock;
	sendFrame(ws, addr, null, 'connection');
	sock.on('data', function(chunk) {
		stats.bytesToDevice += chunk.length;
		sendFrame(ws, addr, chunk, listener.service);
		if (ws.bufferedAmount > PAUSE_AT && ws._socket) {
			// Backpressure from the tunnel: stop reading this client until the WebSocket drains.
			sock.pause();
			ws._socket.once('drain', function() {
				sock.resume();
			});
		}
	});
	sock.on('drain', function() {
		if (sock._mpPausedRemote) {
			sock._mpPausedRemote = false;
			sendFrame(ws, addr, Buffer.from(JSON.stringify(sock._mpTunnelRead || 0)), 'resume');
			emit({ event: 'resume_sent', tunnel: tunnel.id, client: id });
		}
	});
	sock.on('end', function() {
		if (tunnel.clients[id] === sock && ws.readyState === WebSocket.OPEN) {
			sendFrame(ws, addr, null, 'end');
		}
	});
	sock.on('error', function(err) {
		if (tunnel.clients[id] === sock && ws.readyState === WebSocket.OPEN) {
			sendFrame(ws, addr, { message: String(err.message), code: err.code || 'E_UNKNOWN_ERR' }, 'error');
		}
		delete tunnel.clients[id];
	});
	sock.on('close', function() {
		if (tunnel.clients[id] === sock) {
			delete tunnel.clients[id];
		}
	});
}

var wss;
var wsOptions = { maxPayload: 100 * 1024 * 1024, perMessageDeflate: false };
var tlsServer = null;
if (config.tls) {
	// wss: {"tls": {"cert": "/path.crt", "key": "/path.key"}} (telebit-relay serves its tunnel over TLS)
	tlsServer = require('https').createServer({
		cert: fs.readFileSync(config.tls.cert),
		key: fs.readFileSync(config.tls.key)
	});
	wss = new WebSocket.Server(Object.assign({ server: tlsServer }, wsOptions));
	tlsServer.listen(config.wsPort || 0, host); // ws re-emits the server's 'listening'
} else {
	wss = new WebSocket.Server(Object.assign({ host: host, port: config.wsPort || 0 }, wsOptions));
}
wss.on('connection', function(ws, req) {
	new Tunnel(ws, req);
});

var pending = (config.listeners || []).length;
var bound = [];
function maybeReady() {
	if (pending === 0 && wss.address()) {
		emit({ event: 'ready', wsPort: wss.address().port, listeners: bound });
	}
}
(config.listeners || []).forEach(function(listener, i) {
	var server = net.createServer({ allowHalfOpen: true }, function(sock) {
		onClient(listener, sock);
	});
	server.listen(listener.port || 0, host, function() {
		bound[i] = Object.assign({}, listener, { port: server.address().port });
		pending -= 1;
		maybeReady();
	});
});
wss.on('listening', maybeReady);

readline.createInterface({ input: process.stdin }).on('line', function(line) {
	var cmd;
	try {
		cmd = JSON.parse(line);
	} catch (e) {
		emit({ event: 'error', message: 'bad command line' });
		return;
	}
	if (cmd.cmd === 'inject') {
		var targets = tunnels.filter(function(t) {
			return !cmd.tunnel || t.id === cmd.tunnel;
		});
		targets.forEach(function(t) {
			t.ws.send(Buffer.from(cmd.hex, 'hex'), { binary: true });
		});
		emit({ event: 'injected', tunnels: targets.map(function(t) { return t.id; }) });
	} else if (cmd.cmd === 'close_tunnels') {
		tunnels.slice().forEach(function(t) {
			t.ws.close(cmd.code || 1001, 'relay closing');
		});
	} else if (cmd.cmd === 'stats') {
		emit(Object.assign({ event: 'stats', tunnels: tunnels.length, tunnelIds: tunnels.map(function(t) {
			return t.id;
		}) }, stats));
	}
});
process.stdin.on('end', function() {
	process.exit(0);
});
