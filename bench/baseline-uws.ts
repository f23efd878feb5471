import uws from 'uWebSockets.js';

/**
 * The ceiling for bench/http.ts: uWS reading the request body and answering a constant MessagePack
 * reply, with no auth, no decoding and no Redis. `node dist/bench/baseline-uws.js <port>`.
 */
const REPLY = Buffer.from([0x81, 0xa2, 0x6f, 0x6b, 0xc3]); // {ok: true}

function listen(port: number): Promise<void> {
  const app = uws.App().any('/*', (res) => {
    let aborted = false;
    res.onAborted(() => (aborted = true));
    res.onData((_chunk, isLast) => {
      if (isLast && !aborted) res.cork(() => res.writeHeader('content-type', 'application/msgpack').end(REPLY));
    });
  });
  return new Promise((resolve, reject) => app.listen('127.0.0.1', port, (s) => (s ? resolve() : reject(new Error(`cannot listen on ${port}`)))));
}

await listen(Number(process.argv[2]));
console.log('listening');
