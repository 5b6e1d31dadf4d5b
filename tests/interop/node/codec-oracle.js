'use strict';
// A long-lived oracle around the reference codec (npm proxy-packer), for the Python differential tests.
// Protocol: one JSON request per line on stdin, one JSON answer per line on stdout, in order.
//   {"op":"pack","fn":"pack"|"packHeader","meta":{...},"data":null|{"b64":"..."}|{"json":<value>},
//    "service":null|"...","andBody":bool}                      -> {"b64":"<frame or header>"}
//   {"op":"parse","chunks":["<b64>", ...]}                      -> {"events":[...],"error":null|"..."}
//   {"op":"packjs","address":{...},"data":"<b64>"}              -> {"b64":"..."}  (test/pack.js's logic)
// Any failure of the reference is reported as {"error":"..."}; the oracle itself never dies on a request.
var Packer = require('proxy-packer');
var readline = require('readline');

console.error = function() {}; // the reference logs bad version bytes; the tests check behaviour instead
console.warn = function() {};

function b64(buf) {
	return buf ? Buffer.from(buf).toString('base64') : null;
}

function toData(spec) {
	if (spec === null || spec === undefined) return null;
	if (Object.prototype.hasOwnProperty.call(spec, 'b64')) return Buffer.from(spec.b64, 'base64');
	return spec.json;
}

function parse(chunks) {
	var events = [];
	function handler(name) {
		return function(msg) {
			var ev = {
				event: name,
				family: msg.family,
				address: msg.address,
				port: msg.port,
				service: msg.service,
				serviceport: msg.serviceport,
				name: msg.name,
				data: Buffer.isBuffer(msg.data) ? b64(msg.data) : null
			};
			if (name === 'error') {
				ev.message = msg.message;
				ev.code = msg.code;
			}
			events.push(ev);
		};
	}
	var machine = Packer.create({
		onconnection: handler('connection'),
		onmessage: handler('message'),
		oncontrol: handler('control'),
		onerror: handler('error'),
		onend: handler('end'),
		onpause: handler('pause'),
		onresume: handler('resume')
	});
	try {
		chunks.forEach(function(c) {
			machine.fns.addChunk(Buffer.from(c, 'base64'));
		});
	} catch (e) {
		return { events: events, error: String(e) };
	}
	return { events: events, error: null, state: machine.state };
}

function packjs(address, data) {
	// The body of proxy-packer's test/pack.js, minus the file I/O.
	var sni = require('sni');
	var servername = sni(data);
	var m = data.toString().match(/(?:^|[\r\n])Host: ([^\r\n]+)[\r\n]*/im);
	var hostname = ((m && m[1].toLowerCase()) || '').split(':')[0];
	address.name = servername || hostname;
	return Packer.pack(address, data);
}

function handle(req) {
	if (req.op === 'pack') {
		var data = toData(req.data);
		var out =
			req.fn === 'pack'
				? Packer.pack(req.meta, data, req.service || undefined)
				: Packer.packHeader(req.meta, data, req.service || undefined, !!req.andBody, false);
		return { b64: b64(out) };
	}
	if (req.op === 'parse') return parse(req.chunks);
	if (req.op === 'packjs') return { b64: b64(packjs(req.address, Buffer.from(req.data, 'base64'))) };
	if (req.op === 'ping') return { pong: true };
	return { error: 'unknown op ' + req.op };
}

var rl = readline.createInterface({ input: process.stdin, terminal: false, crlfDelay: Infinity });
rl.on('line', function(line) {
	var answer;
	try {
		answer = handle(JSON.parse(line));
	} catch (e) {
		answer = { error: String(e && e.stack ? e.stack.split('\n')[0] : e) };
	}
	process.stdout.write(JSON.stringify(answer) + '\n');
});
