#!/usr/bin/env node
// Side by side: the targets of several runs (their report.md), one column
// per run.  For bench/RESULTS.md:
//   node bench/compare.js 'Run B' bench/results/<run B> 'Run C' bench/results/<run C>
'use strict';

const fs = require('fs');
const path = require('path');

const args = process.argv.slice(2);
if (args.length < 2 || args.length % 2) {
  console.error('usage: compare.js LABEL DIR [LABEL DIR ...]');
  process.exit(2);
}
const runs = [];
for (let i = 0; i < args.length; i += 2) {
  const text = fs.readFileSync(path.join(args[i + 1], 'report.md'), 'utf8');
  const lines = text.split('\n');
  const start = lines.indexOf('## Targets');
  const rows = new Map();
  for (let j = start + 4; j < lines.length && lines[j].startsWith('|'); j++) {
    const cells = lines[j].split('|').slice(1, -1).map((c) => c.trim());
    rows.set(cells[0], { measured: cells[1], verdict: cells[2] });
  }
  runs.push({ label: args[i], rows });
}
const targets = [];
for (const r of runs) for (const t of r.rows.keys()) if (!targets.includes(t)) targets.push(t);
const out = [];
out.push(`| target | ${runs.map((r) => r.label).join(' | ')} |`);
out.push(`| --- | ${runs.map(() => '---').join(' | ')} |`);
for (const t of targets) {
  out.push(`| ${t} | ${runs.map((r) => {
    const c = r.rows.get(t);
    return c ? `${c.verdict === 'n/a' ? '' : `${c.verdict}: `}${c.measured}` : '–';
  }).join(' | ')} |`);
}
console.log(out.join('\n'));
