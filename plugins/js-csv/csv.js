// js-csv: an fxbridge transform plugin in JavaScript (world `transform`).
//
// Pre hook: turns one CSV line from a device, such as `dev-7,21.5,C`, into
// a JSON document for the function: {"device":"dev-7","temp":21.5,"unit":"C"}.
// Post hook: turns the function's JSON reply back into a CSV line for the
// device, using `reply_columns`; without them the reply is published as is.
//
// Config (transform.config in bridge.yaml, every key optional):
//   columns:       names of the CSV fields, in order   (default [device, temp, unit])
//   numeric:       columns parsed as numbers           (default [temp])
//   delimiter:     one character                       (default ",")
//   reply_columns: reply fields written back as CSV    (default: publish reply unchanged)
// A device column that is absent from `columns` is taken from the first
// topic capture, when there is one.
//
// Errors are reported by throwing a string: componentize-js turns a thrown
// value into the `err` case of the WIT `result`.

import { log } from 'fxbridge:transform/host@0.2.0';

const DEFAULTS = {
  columns: ['device', 'temp', 'unit'],
  numeric: ['temp'],
  delimiter: ',',
  reply_columns: null,
};

let config = null;

function stringList(value, key) {
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string' || v === '')) {
    throw `invalid config: ${key} must be a list of non-empty strings`;
  }
  return value;
}

export const setup = {
  configure(json) {
    let raw;
    try {
      raw = JSON.parse(json);
    } catch (e) {
      throw `invalid config: ${e}`;
    }
    raw = raw ?? {};
    if (typeof raw !== 'object' || Array.isArray(raw)) {
      throw 'invalid config: expected an object';
    }
    for (const key of Object.keys(raw)) {
      if (!(key in DEFAULTS)) throw `invalid config: unknown key ${key}`;
    }
    const next = { ...DEFAULTS, ...raw };
    stringList(next.columns, 'columns');
    stringList(next.numeric, 'numeric');
    if (next.reply_columns !== null) stringList(next.reply_columns, 'reply_columns');
    if (typeof next.delimiter !== 'string' || next.delimiter.length !== 1 || next.delimiter === '"') {
      throw 'invalid config: delimiter must be one character other than a double quote';
    }
    for (const name of next.numeric) {
      if (!next.columns.includes(name)) throw `invalid config: numeric column ${name} is not in columns`;
    }
    config = next;
  },
};

// Splits one CSV line; fields may be double-quoted, with "" for a quote.
function splitLine(line, delimiter) {
  const fields = [];
  let i = 0;
  for (;;) {
    let field = '';
    if (line[i] === '"') {
      i += 1;
      for (;;) {
        if (i >= line.length) throw 'unterminated quoted field';
        if (line[i] === '"') {
          if (line[i + 1] === '"') {
            field += '"';
            i += 2;
          } else {
            i += 1;
            break;
          }
        } else {
          field += line[i];
          i += 1;
        }
      }
      if (i < line.length && line[i] !== delimiter) throw `unexpected text after quoted field ${fields.length + 1}`;
    } else {
      const end = line.indexOf(delimiter, i);
      field = (end === -1 ? line.slice(i) : line.slice(i, end)).trim();
      i = end === -1 ? line.length : end;
    }
    fields.push(field);
    if (i >= line.length) return fields;
    i += 1; // the delimiter
  }
}

function csvField(value, delimiter) {
  const text = value === null || value === undefined ? '' : typeof value === 'object' ? JSON.stringify(value) : String(value);
  return text.includes(delimiter) || text.includes('"') || text.includes('\n')
    ? `"${text.replaceAll('"', '""')}"`
    : text;
}

const decoder = new TextDecoder('utf-8', { fatal: true });
const encoder = new TextEncoder();

export const beforeInvoke = {
  transform(msg) {
    let text;
    try {
      text = decoder.decode(msg.payload);
    } catch {
      throw 'payload is not UTF-8';
    }
    const line = text.replace(/\r?\n$/, '');
    if (line.includes('\n')) throw 'payload has more than one line';
    if (line.trim() === '' || line.startsWith('#')) {
      log('debug', `js-csv: skipping blank or comment line on ${msg.topic}`);
      return { tag: 'skip', val: 'blank or comment line' };
    }
    const fields = splitLine(line, config.delimiter);
    if (fields.length !== config.columns.length) {
      throw `expected ${config.columns.length} fields (${config.columns.join(',')}), got ${fields.length}`;
    }
    const doc = {};
    if (!config.columns.includes('device') && msg.captures.length > 0) {
      doc.device = msg.captures[0];
    }
    config.columns.forEach((name, i) => {
      if (config.numeric.includes(name)) {
        const n = Number(fields[i]);
        if (fields[i] === '' || !Number.isFinite(n)) throw `field ${name} is not a number: ${JSON.stringify(fields[i])}`;
        doc[name] = n;
      } else {
        doc[name] = fields[i];
      }
    });
    return { tag: 'invoke', val: { input: encoder.encode(JSON.stringify(doc)), function: undefined } };
  },
};

export const afterInvoke = {
  transform(msg, reply) {
    if (config.reply_columns === null) {
      return [text(reply, undefined)];
    }
    let value;
    try {
      value = JSON.parse(reply);
    } catch {
      throw `reply is not JSON: ${JSON.stringify(reply.slice(0, 80))}`;
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw 'reply is not a JSON object';
    }
    const line = config.reply_columns.map((name) => csvField(value[name], config.delimiter)).join(config.delimiter);
    return [text(line, 'text/csv')];
  },
};

// A result to the route's target: UTF-8 text with an MQTT 5 content type
// (contract 0.2.0), the reply to a request keeping the request's correlation.
function text(body, contentType) {
  return {
    topic: undefined,
    payload: encoder.encode(body),
    qos: undefined,
    retain: false,
    userProperties: [],
    contentType,
    utf8: true,
    correlationData: undefined,
  };
}
