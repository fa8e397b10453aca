import net from 'node:net';

/**
 * A TCP proxy on 127.0.0.1 to the cluster's Unix socket that can silently
 * stop forwarding one connection (a blackholed socket: no FIN, no RST), found
 * by the backend pid the server announces in BackendKeyData.
 */
export class BlackholeProxy {
  private readonly server: net.Server;
  private readonly conns: { client: net.Socket; upstream: net.Socket; pid: number | null; dead: boolean }[] = [];
  port = 0;

  constructor(private readonly socketPath: string) {
    this.server = net.createServer((client) => {
      const upstream = net.connect(this.socketPath);
      const conn = { client, upstream, pid: null as number | null, dead: false };
      this.conns.push(conn);
      let head = Buffer.alloc(0);
      upstream.on('data', (chunk) => {
        if (conn.pid === null) {
          head = Buffer.concat([head, chunk]);
          for (let at = 0; at + 5 <= head.length; ) {
            const len = head.readInt32BE(at + 1);
            if (head[at] === 0x4b && at + 13 <= head.length) conn.pid = head.readInt32BE(at + 5);
            at += 1 + len;
          }
        }
        if (!conn.dead) client.write(chunk);
      });
      client.on('data', (chunk) => {
        if (!conn.dead) upstream.write(chunk);
      });
      const close = () => {
        client.destroy();
        upstream.destroy();
      };
      client.on('error', close);
      upstream.on('error', close);
      client.on('close', () => !conn.dead && upstream.end());
      upstream.on('close', () => !conn.dead && client.end());
    });
  }

  async start(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  /** Stops forwarding the connection of backend `pid`, in both directions, without closing it. */
  blackhole(pid: number): boolean {
    const c = this.conns.find((x) => x.pid === pid);
    if (c) c.dead = true;
    return c !== undefined;
  }

  async close(): Promise<void> {
    for (const c of this.conns) {
      c.client.destroy();
      c.upstream.destroy();
    }
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
