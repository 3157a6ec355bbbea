// vendor.wopbox.jsrender: an example component node pack written in JavaScript.
//
// Built with componentize-js against ../../wit/node-pack.wit (see build.sh).
// The `stdio`, `http` and `fetch-event` engine features are disabled: with
// them StarlingMonkey imports wasi:filesystem and wasi:http, which a pack
// without grants is refused for. Log through the host instead of console.
import { log } from 'openwop:node/host@0.1.0';

const PACK = 'vendor.wopbox.jsrender';
const RENDER = 'vendor.wopbox.jsrender.render';
const VERSION = '0.1.0';

// A typed node failure: componentize-js turns a thrown value into the
// `err` side of `result<string, node-error>`.
function fail(code, message, details) {
  return { code, message, detailsJson: details === undefined ? undefined : JSON.stringify(details) };
}

// `{{ name }}` placeholders, dotted paths into `values`; a missing value is
// an error unless config `{"missing": "empty"}` says to render it as "".
function render(inputs, config) {
  if (typeof inputs.template !== 'string') {
    throw fail('validation_error', '`template` must be a string');
  }
  const values = inputs.values ?? {};
  const missing = [];
  const text = inputs.template.replace(/\{\{\s*([A-Za-z0-9_.]+)\s*\}\}/g, (_, path) => {
    let v = values;
    for (const key of path.split('.')) {
      v = v !== null && typeof v === 'object' ? v[key] : undefined;
    }
    if (v === undefined) {
      missing.push(path);
      return '';
    }
    return typeof v === 'string' ? v : JSON.stringify(v);
  });
  if (missing.length > 0 && config.missing !== 'empty') {
    throw fail('missing_value', `no value for ${missing.join(', ')}`, { missing });
  }
  log('info', `rendered ${text.length} characters`);
  return { text, placeholders: missing.length };
}

export const node = {
  packName() {
    return PACK;
  },
  nodes() {
    return [{ typeId: RENDER, version: VERSION }];
  },
  invoke(typeId, ctx, inputJson) {
    let inputs, config;
    try {
      inputs = JSON.parse(inputJson);
      config = JSON.parse(ctx.configurableJson || '{}');
    } catch (e) {
      throw fail('validation_error', `inputs are not JSON: ${e}`);
    }
    if (typeId !== RENDER) {
      throw fail('wasm_pack_unknown_type', `no node ${typeId}`);
    }
    return JSON.stringify(render(inputs, config ?? {}));
  },
};
