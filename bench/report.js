#!/usr/bin/env node
// Turns one run's data.tsv and meta.txt (bench/results/<run>/) into
// report.md (stdout) and throughput.dat (for bench/throughput.gp).
// Every ratio is computed within a round, then the median over rounds is
// taken: the machine's drift hits both sides of a ratio alike.
'use strict';

const fs = require('fs');
const path = require('path');

const dir = process.argv[2];
if (!dir) { console.error('usage: report.js RESULTS_DIR'); process.exit(2); }

const meta = {};
for (const line of fs.readFileSync(path.join(dir, 'meta.txt'), 'utf8').split('\n')) {
  const i = line.indexOf('=');
  if (i > 0) meta[line.slice(0, i)] = line.slice(i + 1);
}
const rows = [];
for (const line of fs.readFileSync(path.join(dir, 'data.tsv'), 'utf8').split('\n')) {
  if (!line.trim()) continue;
  const [phase, round, name, clients, kvs] = line.split('\t');
  const r = { phase, round: Number(round), name, clients: Number(clients) };
  for (const kv of (kvs || '').split(' ')) {
    const i = kv.indexOf('=');
    if (i <= 0) continue;
    const v = kv.slice(i + 1);
    r[kv.slice(0, i)] = /^-?[0-9.]+$/.test(v) ? Number(v) : v;
  }
  rows.push(r);
}

// ---------------------------------------------------------------- helpers
const median = (xs) => {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};
const rounds = [...new Set(rows.map((r) => r.round))].sort((a, b) => a - b);
const sel = (phase, name, clients) =>
  rows.filter((r) => r.phase === phase && (name === undefined || r.name === name) && (clients === undefined || r.clients === clients));
const byRound = (phase, name, clients, f) => {
  const m = new Map();
  for (const r of sel(phase, name, clients)) m.set(r.round, f(r));
  return m;
};
const rate = (r) => (r.seconds > 0 ? r.events / r.seconds : NaN);
// the outbox worker's CPU during a contender's runs, as % of one core
const workerOf = (phase, n, c) => {
  const v = median(sel(phase, n, c).map((r) => r.worker_cpu));
  return Number.isFinite(v) ? `${Math.round(v * 100)}%` : '–';
};
const perRoundRatio = (a, b) => rounds.map((k) => (a.has(k) && b.has(k) ? a.get(k) / b.get(k) : NaN))
  .filter(Number.isFinite);
const fmt = (x, d = 0) => {
  if (!Number.isFinite(x)) return '–';
  if (d === 0 && Math.abs(x) >= 1000) return Math.round(x).toLocaleString('en-US');
  return x.toFixed(d);
};
const fmtRatio = (xs, d = 2) => (xs.length ? `${fmt(median(xs), d)}× (${xs.map((x) => x.toFixed(2)).join(', ')})` : '–');
const out = [];
const p = (s = '') => out.push(s);
const table = (head, body) => {
  p(`| ${head.join(' | ')} |`);
  p(`| ${head.map(() => '---').join(' | ')} |`);
  for (const b of body) p(`| ${b.join(' | ')} |`);
  p();
};
const targets = [];
const target = (what, measured, pass, note = '') => targets.push({ what, measured, pass, note });
const verdict = (t) => (t.pass === null ? 'n/a' : t.pass === 'ref' ? 'reference' : t.pass ? '**PASS**' : '**FAIL**');

const main = 4;
const has = (phase) => rows.some((r) => r.phase === phase);

// ---------------------------------------------------------------- enqueue
const enqNames = {
  plain: 'plain INSERT, 1 row/tx (ceiling)',
  outbox1: 'outbox.enqueue, 1 subscription',
  outbox4: 'outbox.enqueue, 4 subscriptions',
  plain10: 'plain INSERT, 10 rows/tx (ceiling)',
  outbox10: 'outbox.enqueue, 10 events/tx',
  plain100: 'plain multi-row INSERT, 100 rows/tx (ceiling)',
  many1: 'outbox.enqueue_many, 100 events/call, 1 subscription',
  many4: 'outbox.enqueue_many, 100 events/call, 4 subscriptions',
  pgq: 'PgQ pgq.insert_event',
  graphile: 'graphile-worker add_job',
  pgboss: 'pg-boss send()',
};
const enqCeiling = { outbox10: 'plain10', plain10: 'plain10', plain100: 'plain100', many1: 'plain100', many4: 'plain100' };
const ceilingName = { plain: '1 row/tx', plain10: '10 rows/tx', plain100: '100 rows/tx' };
const sections = [];
if (has('enqueue')) {
  const s = [];
  const rateOf = (n, c) => byRound('enqueue', n, c, rate);
  const walOf = (n, c) => median(sel('enqueue', n, c).map((r) => r.wal / r.events));
  const sizeOf = (n, c) => median(sel('enqueue', n, c).map((r) => r.size / r.events));
  const body = [];
  for (const n of Object.keys(enqNames)) {
    if (!sel('enqueue', n, main).length) continue;
    const ceil = enqCeiling[n] || 'plain';
    const ratios = perRoundRatio(rateOf(n, main), rateOf(ceil, main));
    body.push([enqNames[n], fmt(median([...rateOf(n, main).values()])),
      n === ceil ? '1.00 (ceiling)' : `${fmtRatio(ratios)} of ${ceilingName[ceil]}`,
      fmt(walOf(n, main)), fmt(sizeOf(n, main)), workerOf('enqueue', n, main)]);
  }
  s.push({ title: `Enqueue, pgbench -c ${main} -j 2 (events/s, median of rounds)`,
    head: ['contender', 'events/s', '÷ ceiling: median (per round)', 'WAL B/event', 'table+index B/event', 'outbox worker CPU, % of a core'], body });
  sections.push(...s);
  const r1 = perRoundRatio(rateOf('outbox1', main), rateOf('plain', main));
  const r4 = perRoundRatio(rateOf('outbox4', main), rateOf('plain', main));
  const r10 = perRoundRatio(rateOf('outbox10', main), rateOf('plain10', main));
  target('enqueue, 1 subscription ≥ 0.85× plain INSERT', fmtRatio(r1, 3), median(r1) >= 0.85);
  target('enqueue, 4 subscriptions ≥ 0.70× plain INSERT', fmtRatio(r4, 3), median(r4) >= 0.70);
  target('enqueue, 10 events/tx, against 10 INSERTs/tx (no target set)', fmtRatio(r10), null);
  const m1 = perRoundRatio(rateOf('many1', main), rateOf('plain100', main));
  const m4 = perRoundRatio(rateOf('many4', main), rateOf('plain100', main));
  if (sel('enqueue', 'many1', main).length) {
    target('enqueue_many, 100/call, 1 subscription ≥ 0.9× multi-row INSERT', fmtRatio(m1, 3), median(m1) >= 0.9);
    target('enqueue_many, 100/call, 4 subscriptions ≥ 0.9× multi-row INSERT', fmtRatio(m4, 3), median(m4) >= 0.9);
  }
}

// ---------------------------------------------------------------- drain
const drainNames = {
  outbox: 'outbox claim(100) + ack, N consumers of one subscription',
  outbox_fanout: 'outbox, 4 subscriptions × 1 consumer (fan-out)',
  relay: 'plain relay DELETE … SKIP LOCKED (ceiling)',
  pgq: 'PgQ batches of 100, N consumers (each reads every event)',
  pgboss: 'pg-boss fetch(100) + complete',
  graphile: 'graphile-worker runner, concurrency N',
};
const drainRate = (n, c) => byRound('drain', n, c, rate);
if (has('drain')) {
  const body = [];
  for (const c of [1, 4]) {
    for (const n of Object.keys(drainNames)) {
      if (!sel('drain', n, c).length) continue;
      const rs = drainRate(n, c);
      const vsPgq = n === 'pgq' ? '1.00' : fmtRatio(perRoundRatio(rs, drainRate('pgq', c)));
      const vsRelay = n === 'relay' ? '1.00' : fmtRatio(perRoundRatio(rs, drainRate('relay', c)));
      const wal = median(sel('drain', n, c).map((r) => r.wal / r.events));
      const left = sel('drain', n, c).map((r) => r.left).filter((x) => x !== undefined);
      body.push([`${drainNames[n]}`, c, fmt(median([...rs.values()])), vsPgq, vsRelay, fmt(wal, 1),
        left.length ? fmt(Math.min(...left)) : '(topped up)', workerOf('drain', n, c)]);
    }
  }
  sections.push({ title: 'Drain a backlog (events/s, median of rounds; events counted from the backlogs)',
    head: ['contender', 'consumers', 'events/s', '÷ PgQ', '÷ relay', 'WAL B/event', 'backlog left (min)', 'outbox worker CPU'], body });
  for (const c of [1, 4]) {
    const r = perRoundRatio(drainRate('outbox', c), drainRate('pgq', c));
    target(`drain, ${c} consumer${c > 1 ? 's' : ''} ≥ 1.0× PgQ`, fmtRatio(r, 3), median(r) >= 1.0);
  }
  {
    const r = perRoundRatio(drainRate('outbox_fanout', 4), drainRate('pgq', 4));
    if (r.length) target('drain, 4 subscriptions × 1 consumer (fan-out, PgQ\'s own model) ≥ 1.0× PgQ 4 consumers', fmtRatio(r, 3), median(r) >= 1.0);
  }
  for (const [c, ref] of [[1, 24000], [4, 40000]]) {
    const m = median([...drainRate('outbox', c).values()]);
    target(`drain, ${c} consumer${c > 1 ? 's' : ''} ≥ 3× pgmq (not installable here: against the anchors' ${ref / 1000}k, another day)`,
      `${fmt(m)} ev/s = ${fmt(m / ref, 2)}× ${ref / 1000}k`, 'ref', m / ref >= 3 ? 'would pass' : 'would fail');
  }
}

// ---------------------------------------------------------------- scale (clients)
const clientCounts = [...new Set(rows.filter((r) => r.phase === 'enqueue' || r.phase === 'drain').map((r) => r.clients))]
  .sort((a, b) => a - b);
if (clientCounts.length) {
  const enq = ['plain', 'outbox1', 'pgq', 'graphile', 'pgboss'];
  const body = [];
  for (const n of enq) {
    body.push([enqNames[n], ...clientCounts.map((c) => {
      const rs = rateOf2('enqueue', n, c);
      if (!rs.size) return '–';
      const ratio = perRoundRatio(rs, rateOf2('enqueue', 'plain', c));
      const w = n === 'outbox1' ? `; worker ${workerOf('enqueue', n, c)} of a core` : '';
      return `${fmt(median([...rs.values()]))}${n === 'plain' ? '' : ` (${fmt(median(ratio), 2)}×${w})`}`;
    })]);
  }
  sections.push({ title: 'Enqueue against clients (events/s, median; ÷ plain INSERT at the same clients)',
    head: ['contender', ...clientCounts.map((c) => `${c} client${c > 1 ? 's' : ''}`)], body });
  const dn = ['relay', 'outbox', 'pgq', 'pgboss', 'graphile'];
  const body2 = [];
  for (const n of dn) {
    body2.push([drainNames[n], ...clientCounts.map((c) => {
      const rs = rateOf2('drain', n, c);
      if (!rs.size) return '–';
      const ratio = perRoundRatio(rs, rateOf2('drain', 'relay', c));
      return `${fmt(median([...rs.values()]))}${n === 'relay' ? '' : ` (${fmt(median(ratio), 2)}×)`}`;
    })]);
  }
  sections.push({ title: 'Drain against consumers (events/s, median; ÷ plain relay at the same consumers)',
    head: ['contender', ...clientCounts.map((c) => `${c} consumer${c > 1 ? 's' : ''}`)], body: body2 });

  // chart data
  const cols = [['enqueue', 'outbox1'], ['enqueue', 'plain'], ['enqueue', 'pgq'], ['enqueue', 'pgboss'],
    ['enqueue', 'graphile'], ['drain', 'outbox'], ['drain', 'relay'], ['drain', 'pgq'], ['drain', 'pgboss'],
    ['drain', 'graphile']];
  const lines = ['# clients ' + cols.map(([a, b]) => `${a}_${b}`).join(' ')];
  for (const c of clientCounts) {
    lines.push([c, ...cols.map(([ph, n]) => {
      const m = median([...rateOf2(ph, n, c).values()]);
      return Number.isFinite(m) ? m.toFixed(1) : 'NaN';
    })].join(' '));
  }
  fs.writeFileSync(path.join(dir, 'throughput.dat'), lines.join('\n') + '\n');
}
function rateOf2(phase, n, c) { return byRound(phase, n, c, rate); }

// ---------------------------------------------------------------- latency + held xmin
const growth = (r) => {
  const g1 = r.dead_mid - r.dead_start;
  const g2 = r.dead_end - r.dead_mid;
  return { g1, g2, stops: g2 <= 0.2 * Math.max(g1, 0) + 100 };
};
if (has('latency')) {
  const body = [];
  for (const m of ['normal', 'held']) {
    const rs = sel('latency', m);
    if (!rs.length) continue;
    body.push([m === 'normal' ? 'no held snapshot' : 'snapshot held for the whole run',
      fmt(median(rs.map((r) => r.p50_ms)), 2), fmt(median(rs.map((r) => r.p99_ms)), 2),
      fmt(Math.max(...rs.map((r) => r.max_ms)), 1),
      rs.map((r) => fmt(r.p99_ms, 2)).join(', '),
      fmt(median(rs.map((r) => r.send_p99_ms)), 2),
      fmt(median(rs.map((r) => r.consume_rate)), 0),
      fmt(median(rs.map((r) => r.consumed / Math.max(r.claims, 1))), 1),
      workerOf('latency', m, 1),
      rs.map((r) => `${fmt(r.dead_start)} → ${fmt(r.dead_mid)} → ${fmt(r.dead_end)}`).join('; ')]);
  }
  sections.push({ title: `Latency, commit → claimed, at a steady ${meta.sizes ? meta.sizes.match(/latency ([0-9]+)\/s/)?.[1] : ''} events/s (ms; medians of rounds, max of all)`,
    head: ['run', 'p50', 'p99', 'max', 'p99 per round', 'p99 from send', 'consumed/s', 'events per claim',
      'outbox worker CPU', 'outbox dead tuples start → mid → end, per round'], body });
  const n = sel('latency', 'normal');
  const h = sel('latency', 'held');
  const p99 = median(n.map((r) => r.p99_ms));
  target('commit → claimed p99 ≤ 10 ms at 1,000 events/s', `${fmt(p99, 2)} ms (rounds: ${n.map((r) => fmt(r.p99_ms, 2)).join(', ')}; max ${fmt(Math.max(...n.map((r) => r.max_ms)), 1)} ms)`, p99 <= 10);
  if (h.length) {
    const rr = perRoundRatio(byRound('latency', 'held', 1, (r) => r.consume_rate), byRound('latency', 'normal', 1, (r) => r.consume_rate));
    target('held xmin, steady 1,000/s: throughput ≥ 0.9× the run without', fmtRatio(rr, 3), median(rr) >= 0.9);
    const hp99 = median(h.map((r) => r.p99_ms));
    target('held xmin, steady 1,000/s: latency p99 (no target; against the run without)', `${fmt(hp99, 2)} ms vs ${fmt(p99, 2)} ms`, null);
    const gs = h.map(growth);
    target('held xmin, steady 1,000/s: outbox dead tuples stop growing (2nd-half growth ≤ 0.2 × 1st-half + 100)',
      gs.map((g) => `+${fmt(g.g1)} then +${fmt(g.g2)}`).join('; '), gs.every((g) => g.stops));
  }
}
if (has('claim-wait')) {
  const body = [];
  for (const m of ['steady', 'idle']) {
    const rs = sel('claim-wait', m);
    if (!rs.length) continue;
    body.push([m === 'steady' ? 'steady load' : 'nearly idle server', fmt(rs[0].rate, 0),
      fmt(median(rs.map((r) => r.p50_ms)), 2), fmt(median(rs.map((r) => r.p99_ms)), 2),
      fmt(Math.max(...rs.map((r) => r.max_ms)), 1), rs.map((r) => fmt(r.p99_ms, 2)).join(', '),
      fmt(median(rs.map((r) => r.consume_rate)), 0)]);
  }
  sections.push({ title: 'claim(..., wait), commit → claimed: the claim waits on the server, no LISTEN (ms; medians of rounds, max of all)',
    head: ['run', 'events/s', 'p50', 'p99', 'max', 'p99 per round', 'consumed/s'], body });
  for (const [m, what] of [['steady', 'at 1,000 events/s'], ['idle', 'on a nearly idle server']]) {
    const rs = sel('claim-wait', m);
    if (!rs.length) continue;
    const p = median(rs.map((r) => r.p99_ms));
    target(`claim(wait) wakes within 10 ms (p99) ${what}`, `${fmt(p, 2)} ms (rounds: ${rs.map((r) => fmt(r.p99_ms, 2)).join(', ')})`, p <= 10);
  }
}
if (has('held')) {
  const body = [];
  for (const k of ['outbox-normal', 'outbox-held', 'relay-normal', 'relay-held']) {
    const rs = sel('held', k);
    if (!rs.length) continue;
    const base = k.replace('held', 'normal');
    const ratio = k.endsWith('held') ? fmtRatio(perRoundRatio(byRound('held', k, 1, (r) => r.consume_rate), byRound('held', base, 1, (r) => r.consume_rate))) : '1.00';
    body.push([k.replace('-normal', ', no held snapshot').replace('-held', ', snapshot held'),
      fmt(median(rs.map((r) => r.consume_rate))), fmt(median(rs.map((r) => r.produce_rate))), ratio,
      fmt(median(rs.map((r) => r.p99_ms)), 2), workerOf('held', k, 1),
      rs.map((r) => `${fmt(r.dead_start)} → ${fmt(r.dead_mid)} → ${fmt(r.dead_end)}`).join('; ')]);
  }
  sections.push({ title: 'Held xmin under saturation: 4 producers as fast as they go, 1 consumer (events/s consumed, median)',
    head: ['run', 'consumed/s', 'produced/s', 'held ÷ not held, per round', 'p99 ms', 'outbox worker CPU', 'dead tuples start → mid → end, per round'], body });
  const rr = perRoundRatio(byRound('held', 'outbox-held', 1, (r) => r.consume_rate), byRound('held', 'outbox-normal', 1, (r) => r.consume_rate));
  target('held xmin, saturation: throughput ≥ 0.9× the run without', fmtRatio(rr, 3), median(rr) >= 0.9);
  const gs = sel('held', 'outbox-held').map(growth);
  target('held xmin, saturation: outbox dead tuples stop growing', gs.map((g) => `+${fmt(g.g1)} then +${fmt(g.g2)}`).join('; '), gs.every((g) => g.stops));
  const rl = perRoundRatio(byRound('held', 'relay-held', 1, (r) => r.consume_rate), byRound('held', 'relay-normal', 1, (r) => r.consume_rate));
  target('held xmin, saturation: the plain relay, for comparison (no target)', fmtRatio(rl), null);
}

// ---------------------------------------------------------------- cost
let steadyWal = null;
if (has('enqueue') && has('drain')) {
  const perEv = (phase, n, c, f) => median(sel(phase, n, c).map((r) => r[f] / r.events));
  const plainWal = perEv('enqueue', 'plain', main, 'wal');
  const plainSize = perEv('enqueue', 'plain', main, 'size');
  const lines = [
    ['plain INSERT (the reference)', perEv('enqueue', 'plain', main, 'wal'), 0, perEv('enqueue', 'plain', main, 'size'), 0],
    ['outbox, 1 subscription: enqueue + claim/ack (1 consumer)', perEv('enqueue', 'outbox1', main, 'wal'), perEv('drain', 'outbox', 1, 'wal'),
      perEv('enqueue', 'outbox1', main, 'size'), perEv('drain', 'outbox', 1, 'size')],
    ['outbox, 4 subscriptions: enqueue ÷ 4 + claim/ack per subscription (fan-out runs)', perEv('enqueue', 'outbox4', main, 'wal') / 4,
      perEv('drain', 'outbox_fanout', 4, 'wal'), perEv('enqueue', 'outbox4', main, 'size') / 4, perEv('drain', 'outbox_fanout', 4, 'size')],
    ['plain relay: INSERT + DELETE … SKIP LOCKED', perEv('enqueue', 'plain', main, 'wal'), perEv('drain', 'relay', 1, 'wal'),
      perEv('enqueue', 'plain', main, 'size'), perEv('drain', 'relay', 1, 'size')],
    ['PgQ: insert_event + batch (1 consumer)', perEv('enqueue', 'pgq', main, 'wal'), perEv('drain', 'pgq', 1, 'wal'),
      perEv('enqueue', 'pgq', main, 'size'), perEv('drain', 'pgq', 1, 'size')],
    ['pg-boss: send + fetch/complete', perEv('enqueue', 'pgboss', main, 'wal'), perEv('drain', 'pgboss', 1, 'wal'),
      perEv('enqueue', 'pgboss', main, 'size'), perEv('drain', 'pgboss', 1, 'size')],
    ['graphile-worker: add_job + run', perEv('enqueue', 'graphile', main, 'wal'), perEv('drain', 'graphile', 1, 'wal'),
      perEv('enqueue', 'graphile', main, 'size'), perEv('drain', 'graphile', 1, 'size')],
  ];
  // WAL without full-page images, where pg_waldump could read it
  const noFpi = (phase, n, c) => median(sel(phase, n, c).filter((r) => Number.isFinite(r.fpi)).map((r) => (r.wal - r.fpi) / r.events));
  const nf = [
    [['enqueue', 'plain', main], null],
    [['enqueue', 'outbox1', main], ['drain', 'outbox', 1]],
    [['enqueue', 'outbox4', main, 4], ['drain', 'outbox_fanout', 4]],
    [['enqueue', 'plain', main], ['drain', 'relay', 1]],
    [['enqueue', 'pgq', main], ['drain', 'pgq', 1]],
    [['enqueue', 'pgboss', main], ['drain', 'pgboss', 1]],
    [['enqueue', 'graphile', main], ['drain', 'graphile', 1]],
  ].map(([e, d]) => noFpi(e[0], e[1], e[2]) / (e[3] || 1) + (d ? noFpi(d[0], d[1], d[2]) : 0));
  const body = lines.map(([n, we, wd, se, sd], i) => [n, fmt(we), fmt(wd, 1), fmt(we + wd), fmt((we + wd) / plainWal, 2), fmt(nf[i]), fmt(se), fmt(sd, 1), fmt(se + sd)]);
  sections.push({ title: 'Cost per event per subscription (medians of the enqueue runs at 4 clients and the drain runs)',
    head: ['', 'WAL enqueue', 'WAL drain', 'WAL total', '÷ plain INSERT', 'WAL total without full-page images', 'bytes enqueue', 'bytes drain', 'bytes total'], body });
  if (has('latency')) {
    const l = sel('latency', 'normal').filter((r) => r.wal > 0);
    if (l.length) {
      const w = median(l.map((r) => r.wal / r.produced));
      const epc = median(l.map((r) => r.consumed / Math.max(r.claims, 1)));
      const wf = median(l.filter((r) => Number.isFinite(r.fpi)).map((r) => (r.wal - r.fpi) / r.produced));
      body.push([`outbox, 1 subscription, at a steady 1,000/s with a LISTENing consumer (${fmt(epc, 1)} events per claim; all WAL of the run)`,
        '', '', fmt(w), fmt(w / plainWal, 2), fmt(wf), '', '', '']);
      steadyWal = [w, epc];
    }
  }
  const o1 = lines[1][1] + lines[1][2];
  const o4 = lines[2][1] + lines[2][2];
  target('WAL per event per subscription (enqueue + drain), 1 subscription ≤ 2× plain INSERT', `${fmt(o1)} B vs ${fmt(plainWal)} B = ${fmt(o1 / plainWal, 2)}×`, o1 / plainWal <= 2);
  target('the same, 4 subscriptions ≤ 2× plain INSERT', `${fmt(o4)} B vs ${fmt(plainWal)} B = ${fmt(o4 / plainWal, 2)}×`, o4 / plainWal <= 2);
  if (steadyWal) {
    target('the same, 1 subscription, at a steady 1,000/s (small claims) ≤ 2× plain INSERT',
      `${fmt(steadyWal[0])} B vs ${fmt(plainWal)} B = ${fmt(steadyWal[0] / plainWal, 2)}× (${fmt(steadyWal[1], 1)} events per claim)`,
      steadyWal[0] / plainWal <= 2);
  }
  void plainSize;
}

// ---------------------------------------------------------------- claim scale
if (has('claim_scale')) {
  const s = byRound('claim_scale', 'small', 1, (r) => r.claim_ms);
  const b = byRound('claim_scale', 'big', 1, (r) => r.claim_ms);
  const st = byRound('claim_scale', 'small', 1, (r) => r.tx_ms);
  const bt = byRound('claim_scale', 'big', 1, (r) => r.tx_ms);
  const bigN = Math.max(...sel('claim_scale', 'big').map((r) => r.backlog));
  const smallN = Math.max(...sel('claim_scale', 'small').map((r) => r.backlog));
  sections.push({ title: 'Claim latency against the backlog (pgbench -c 1, claim(s, 100) then ack; ms, median of rounds)',
    head: ['backlog', 'claim(100)', 'claim + ack transaction', 'claim per round'],
    body: [[fmt(smallN), fmt(median([...s.values()]), 3), fmt(median([...st.values()]), 3), [...s.values()].map((x) => fmt(x, 3)).join(', ')],
      [fmt(bigN), fmt(median([...b.values()]), 3), fmt(median([...bt.values()]), 3), [...b.values()].map((x) => fmt(x, 3)).join(', ')]] });
  const r = perRoundRatio(b, s);
  target(`claim latency at ${fmt(bigN)} within 2× of that at ${fmt(smallN)}`, fmtRatio(r, 3), median(r) <= 2,
    meta.mode === 'full' ? '' : '10M with --full');
}

// ---------------------------------------------------------------- soak
if (has('soak')) {
  const s = sel('soak', 'outbox')[0];
  const sizes = String(s.sizes).split(',').map((x) => x.split(':').map(Number));
  const dead = String(s.samples).split(',').map((x) => x.split(':').map(Number));
  sections.push({ title: `Soak: steady load, outbox.retention short (produced ${fmt(s.produced)}, WAL ${fmt(s.wal / s.produced)} B/event, ${Number.isFinite(s.fpi) ? fmt((s.wal - s.fpi) / s.produced) : '–'} without full-page images, p50 ${fmt(s.p50_ms, 2)} ms, p99 ${fmt(s.p99_ms, 2)} ms, max ${fmt(s.max_ms, 1)} ms)`,
    head: ['t (s)', 'outbox table+index bytes', 'dead tuples'],
    body: sizes.map(([t, b], i) => [fmt(t, 0), fmt(b), dead[i] ? fmt(dead[i][1]) : '–']) });
  const t = sel('soak_table');
  if (t.length) {
    sections.push({ title: 'Soak: outbox tables at the end', head: ['table', 'live', 'dead', 'bytes'],
      body: t.map((r) => [r.name, fmt(r.live), fmt(r.dead), fmt(r.bytes)]) });
  }
  const half = sizes.filter(([tt]) => tt >= sizes[sizes.length - 1][0] / 2);
  const grow = half.length > 1 ? half[half.length - 1][1] - half[0][1] : NaN;
  target('soak: storage stops growing (second half of the soak)', `${fmt(grow)} bytes over the second half`, null);
}

// ---------------------------------------------------------------- background
if (has('background')) {
  sections.push({ title: 'Background activity during each phase (autovacuum runs from the server log, checkpoints, the machine\'s 1-minute load average)',
    head: ['phase', 'autovacuum runs', 'tables', 'checkpoints', 'load average start → end'],
    body: sel('background').map((r) => [r.name.replace(/_/g, ' '), fmt(r.autovacuums), String(r.tables).replace(/,/g, ', '),
      fmt(r.checkpoints), `${r.load_start} → ${r.load_end}`]) });
}

// ---------------------------------------------------------------- print
p(`# outbox benchmark: ${meta.mode} run, ${meta.started}`);
p();
p(`- command: \`${meta.command}\``);
p(`- machine: ${meta.nproc} cores, ${meta.memory}, kernel ${meta.kernel}; load average ${meta.loadavg_start} at start, ${meta.loadavg_end} at the end (other work shares this machine)`);
p(`- ${meta.postgres}`);
p(`- cluster: ${meta.settings}`);
p(`- outbox ${meta.outbox_commit} (${meta.outbox_tree}); PgQ ${meta.pgq}; pg-boss ${meta.pgboss}; graphile-worker ${meta.graphile_worker}; node ${meta.node}; pgmq: not packaged for Debian, not measured`);
p(`- ${meta.rounds} round(s); ${meta.sizes}; took ${fmt(Number(meta.seconds) / 60, 1)} min`);
p();
p('## Targets');
p();
table(['target', 'measured: median (per round)', 'verdict'], targets.map((t) => [t.what, t.measured + (t.note ? ` (${t.note})` : ''), verdict(t)]));
for (const s of sections) {
  p(`## ${s.title}`);
  p();
  table(s.head, s.body);
}
process.stdout.write(out.join('\n'));
