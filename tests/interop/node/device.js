#!/usr/bin/env node
// A device client written with the reference codec (npm proxy-packer 2.0.4) and ws, behaving like
// telebit.js v0.20: it dials the relay's WebSocket, answers `hello` with [-1,null], sends add_token,
// and for every `connection` frame connects to a local port and pipes data as proxy-packer frames,
// with end/error and per-client pause/resume. Used by the edge interop tests and, paired with the
// reference relay, as the benchmark's "reference system" baseline.
//
// Two quirks of telebit 0.20.8's lib/remote.js are reproduced on purpose (the edge must cope with them):
//   - onpause/onresume log `opts.data.toString()`: a pause or resume without a body throws a TypeError
//     and the device process exits.
//   - onconnection pauses the WebSocket's socket until the local connect is done, but proxy-packer goes
//     on parsing the rest of the same WebSocket message: data for the new client in that message finds
//     no client yet ("did not get 'connection' event"), so a second local connection is opened for it.
//     The first one is leaked; later data goes to whichever connected last.
//
// usage: node device.js --url ws://127.0.0.1:8443/ --token JWT
//          [--token-in handshake|query|header|basic] [--name example.com=3000]... [--port 5050=54321]...
//          [--host 127.0.0.1] [--ca ca.crt] [--quiet]
//        (--ca: trust this CA for a wss:// url)
// stdout: one JSON line per notable event ({"event":"ready"}, {"event":"connection",...}, ...).
'use strict';

var net = require('net');
var path = require('path');
var Packer = require(path.join(__dirname, 'node_modules', 'proxy-packer'));
var WebSocket = require(path.join(__dirname, 'node_modules', 'ws'));

var HIGH_WATER = 1024 * 1024; // telebit pauses at 1 MiB buffered, both per socket and for the WebSocket

function parseArgs(argv) {
	var opts = { names: {}, ports: {}, tokenIn: 'handshake', host: '127.0.0.1', quiet: false };
	for (var i = 0; i < argv.length; i++) {
		var arg = argv[i];
		var next = function () { i += 1; return argv[i]; };
		if (arg === '--url') { opts.url = next(); }
		else if (arg === '--token') { opts.token = next(); }
		else if (arg === '--token-in') { opts.tokenIn = next(); }
		else if (arg === '--host') { opts.host = next(); }
		else if (arg === '--ca') { opts.ca = next(); }
		else if (arg === '--quiet') { opts.quiet = true; }
		else if (arg === '--name' || arg === '--port') {
			var pair = next().split('=');
			var table = arg === '--name' ? opts.names : opts.ports;
			table[pair[0].toLowerCase()] = parseInt(pair[1], 10);
		} else {
			console.error('device.js: unknown argument ' + arg);
			process.exit(2);
		}
	}
	if (!opts.url || !opts.token) {
		console.error('device.js: --url and --token are required');
		process.exit(2);
	}
	return opts;
}

var opts = parseArgs(process.argv.slice(2));

function report(obj) {
	if (!opts.quiet || obj.event === 'ready' || obj.event === 'closed' || obj.event === 'rejected') {
		process.stdout.write(JSON.stringify(obj) + '\n');
	}
}

var url = opts.url;
var headers = {};
if (opts.tokenIn === 'query') {
	url += (url.indexOf('?') < 0 ? '?' : '&') + 'access_token=' + encodeURIComponent(opts.token);
} else if (opts.tokenIn === 'header') {
	headers.Authorization = 'Bearer ' + opts.token;
} else if (opts.tokenIn === 'basic') {
	headers.Authorization = 'Basic ' + Buffer.from('device:' + opts.token).toString('base64');
}

var wsOptions = { headers: headers, perMessageDeflate: false, maxPayload: 100 * 1024 * 1024 };
if (opts.ca) { wsOptions.ca = require('fs').readFileSync(opts.ca); }
var ws = new WebSocket(url, wsOptions);
var clients = {}; // addrToId -> { socket, meta, localPaused }
var nextId = Math.floor(Math.random() * 1000) + 2;
var tokenRequestId = 0;
var wsPausedAll = false;
var lastSeen = Date.now();
// Local connects in flight. Like telebit's `wstunneler._socket.pause()`, later WebSocket messages are
// not read meanwhile (held here); the message being parsed is finished all the same.
var connecting = 0;
var held = [];

function send(buf) {
	if (ws.readyState !== WebSocket.OPEN) { return; }
	ws.send(buf, { binary: true });
	// Like telebit: a WebSocket buffer past the high-water mark pauses every local socket.
	if (!wsPausedAll && ws.bufferedAmount > HIGH_WATER) {
		wsPausedAll = true;
		Object.keys(clients).forEach(function (id) { clients[id].socket.pause(); });
		var poll = function () {
			if (ws.readyState !== WebSocket.OPEN) { return; }
			if (ws.bufferedAmount > HIGH_WATER / 2) { setTimeout(poll, 5); return; }
			wsPausedAll = false;
			Object.keys(clients).forEach(function (id) {
				if (!clients[id].remotePaused) { clients[id].socket.resume(); }
			});
		};
		setTimeout(poll, 5);
	}
}

function sendControl(value) {
	send(Packer.packHeader(null, value, 'control', true));
}

function meta(msg) {
	return { family: msg.family, address: msg.address, port: msg.port, service: msg.service,
		serviceport: msg.serviceport, name: msg.name };
}

// packHeader sets meta.service to the frame's service: pack from a copy, or the client's later data
// frames would go out as `resume` or `end` frames.
function pack(addr, data, service, andBody) {
	return Packer.packHeader(Object.assign({}, addr), data, service, andBody);
}

function sendError(addr, message, code) {
	send(pack(addr, { message: message, code: code }, 'error', true));
}

function localPortFor(msg) {
	if (msg.service === 'tcp' || !msg.name) { return opts.ports[String(msg.serviceport)]; }
	return opts.names[String(msg.name).toLowerCase()] || opts.ports[String(msg.serviceport)];
}

function readHeld() {
	while (!connecting && held.length) {
		machine.fns.addChunk(held.shift());
	}
}

function onConnection(msg) {
	var id = Packer.addrToId(msg);
	var addr = meta(msg);
	var localPort = localPortFor(msg);
	report({ event: 'connection', id: id, service: msg.service, serviceport: msg.serviceport, name: msg.name });
	if (!localPort) {
		sendError(addr, 'no local service for ' + (msg.name || msg.serviceport), 'E_NO_SERVICE');
		return;
	}
	var socket = net.connect({ host: opts.host, port: localPort });
	var client = { socket: socket, meta: addr, remotePaused: false, localPaused: false, ended: false };
	var pending = true;
	connecting += 1;
	function connectDone() {
		if (pending) {
			pending = false;
			connecting -= 1;
			readHeld();
		}
	}
	socket.on('connect', function () {
		// telebit adds the client only once connected (sorting-hat's callback), overwriting a twin
		clients[id] = client;
		if (msg.data && msg.data.length) { socket.write(msg.data); }
		if (wsPausedAll) { socket.pause(); }
		connectDone();
	});
	socket.on('data', function (chunk) {
		lastSeen = Date.now();
		send(pack(addr, chunk, addr.service));
		send(chunk);
	});
	socket.on('drain', function () {
		if (client.localPaused) {
			client.localPaused = false;
			send(pack(addr, Buffer.from(String(socket.writableLength)), 'resume', true));
		}
	});
	socket.on('end', function () {
		if (!client.ended) {
			client.ended = true;
			send(pack(addr, null, 'end'));
		}
	});
	socket.on('error', function (err) {
		report({ event: 'local_error', id: id, message: err.message });
		if (pending || (clients[id] === client && !client.ended)) {
			client.ended = true;
			sendError(addr, err.message, err.code || 'E_LOCAL');
		}
		connectDone(); // unlike telebit, which never resumes its WebSocket after a failed connect
	});
	socket.on('close', function () {
		if (clients[id] === client) { delete clients[id]; }
		if (!client.ended) {
			client.ended = true;
			send(pack(addr, null, 'end'));
		}
	});
}

function withClient(msg, fn) {
	var client = clients[Packer.addrToId(msg)];
	if (!client) {
		sendError(meta(msg), 'no matching connection', 'E_NO_CONN');
		return;
	}
	fn(client);
}

var machine = Packer.create({
	oncontrol: function (msg) {
		var value;
		try { value = JSON.parse(msg.data.toString()); } catch (e) { report({ event: 'bad_control' }); return; }
		report({ event: 'control', value: value });
		if (!Array.isArray(value)) { return; }
		if (value[1] === 'hello') {
			tokenRequestId = nextId++;
			sendControl([tokenRequestId, 'add_token', opts.token]);
			sendControl([-value[0], null]);
		} else if (value[0] === -tokenRequestId) {
			if (value[1]) { report({ event: 'rejected', error: value[1] }); }
			else { report({ event: 'ready' }); }
		} else if (value[0] > 0) {
			sendControl([-value[0], { message: 'unknown command ' + value[1], code: 'E_UNKNOWN_COMMAND' }]);
		}
	},
	onconnection: onConnection,
	onmessage: function (msg) {
		if (!clients[Packer.addrToId(msg)]) {
			// telebit: "[debug] did not get 'connection' event", then onconnection(tun) with this data
			report({ event: 'no_connection_event', id: Packer.addrToId(msg) });
			onConnection(msg);
			return;
		}
		withClient(msg, function (client) {
			if (!client.socket.write(msg.data) && !client.localPaused) {
				if (client.socket.writableLength > HIGH_WATER) {
					client.localPaused = true;
					send(pack(client.meta, Buffer.from(String(client.socket.writableLength)),
						'pause', true));
				}
			}
		});
	},
	onend: function (msg) {
		var client = clients[Packer.addrToId(msg)];
		if (!client) { return; }
		client.ended = true;
		client.socket.end();
		// let it drain, then make sure it is gone (telebit waits up to 60 s)
		setTimeout(function () { client.socket.destroy(); }, 60000).unref();
	},
	onerror: function (msg) {
		var client = clients[Packer.addrToId(msg)];
		report({ event: 'remote_error', message: msg.message, code: msg.code });
		if (!client) { return; }
		client.ended = true;
		client.socket.end();
		setTimeout(function () { client.socket.destroy(); }, 60000).unref();
	},
	onpause: function (msg) {
		withClient(msg, function (client) {
			// telebit logs "remote received <body> of <n> sent": no body, no device (TypeError)
			report({ event: 'paused', id: Packer.addrToId(msg), received: msg.data.toString(),
				serviceport: msg.serviceport, name: msg.name });
			client.remotePaused = true;
			client.socket.pause();
		});
	},
	onresume: function (msg) {
		withClient(msg, function (client) {
			report({ event: 'resumed', id: Packer.addrToId(msg), received: msg.data.toString(),
				serviceport: msg.serviceport, name: msg.name });
			client.remotePaused = false;
			if (!wsPausedAll) { client.socket.resume(); }
		});
	}
});

ws.on('open', function () { report({ event: 'open' }); });
ws.on('message', function (data) {
	lastSeen = Date.now();
	var chunk = Buffer.isBuffer(data) ? data : Buffer.from(data);
	// in order: behind whatever is still held (readHeld stops again when a message starts a connect)
	held.push(chunk);
	readHeld();
});
ws.on('pong', function () { lastSeen = Date.now(); });
ws.on('ping', function () { lastSeen = Date.now(); });
ws.on('unexpected-response', function (req, res) {
	report({ event: 'rejected', status: res.statusCode });
	process.exit(3);
});
ws.on('error', function (err) { report({ event: 'ws_error', message: err.message }); });
ws.on('close', function (code) {
	report({ event: 'closed', code: code });
	Object.keys(clients).forEach(function (id) { clients[id].socket.destroy(); });
	process.exit(0);
});

// telebit keepalive: ping after 6 s of silence, give up 10 s later
var keepalive = setInterval(function () {
	var idle = Date.now() - lastSeen;
	if (idle > 16000) { ws.terminate(); }
	else if (idle > 6000 && ws.readyState === WebSocket.OPEN) { ws.ping(); }
}, 1000);
keepalive.unref();

process.on('SIGTERM', function () { ws.close(1001); setTimeout(function () { process.exit(0); }, 500); });
