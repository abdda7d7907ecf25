// The Prometheus text exposition format (what GET /metrics answers) as samples.

function parseValue(text) {
  if (text === '+Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  return Number(text);
}

function parseLabels(line, start) {
  // start is just after '{'; returns [labels, index after '}']
  const labels = {};
  let i = start;
  while (i < line.length && line[i] !== '}') {
    const eq = line.indexOf('=', i);
    if (eq < 0 || line[eq + 1] !== '"') throw new Error(`bad labels: ${line}`);
    const name = line.slice(i, eq).trim().replace(/^,/, '').trim();
    let value = '';
    let j = eq + 2;
    for (; j < line.length && line[j] !== '"'; j += 1) {
      if (line[j] === '\\') {
        j += 1;
        value += line[j] === 'n' ? '\n' : line[j];
      } else {
        value += line[j];
      }
    }
    labels[name] = value;
    i = j + 1;
    if (line[i] === ',') i += 1;
  }
  return [labels, i + 1];
}

/** Every sample of a text exposition: {name, labels, value}. Comments and malformed lines are skipped. */
export function parsePrometheus(text) {
  const samples = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    try {
      const nameEnd = line.search(/[{\s]/);
      if (nameEnd < 0) continue;
      const name = line.slice(0, nameEnd);
      let labels = {};
      let rest = line.slice(nameEnd);
      if (line[nameEnd] === '{') {
        const [parsed, after] = parseLabels(line, nameEnd + 1);
        labels = parsed;
        rest = line.slice(after);
      }
      const [value] = rest.trim().split(/\s+/);
      samples.push({ name, labels, value: parseValue(value) });
    } catch {
      // a line this parser does not understand is left out
    }
  }
  return samples;
}

/** The sum of a metric's samples that pass `keep(labels)`. */
export function total(samples, name, keep = () => true) {
  return samples.filter((s) => s.name === name && keep(s.labels)).reduce((sum, s) => sum + s.value, 0);
}

/** A metric's values by one label (e.g. memory by model). */
export function byLabel(samples, name, label) {
  const values = new Map();
  for (const s of samples) {
    if (s.name === name && label in s.labels) values.set(s.labels[label], (values.get(s.labels[label]) || 0) + s.value);
  }
  return values;
}
