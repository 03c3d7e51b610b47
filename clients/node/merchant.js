#!/usr/bin/env node
// A merchant backend in Node.js: it gets an access token from the authsvc TokenService (OAuth 2.0
// client credentials, client_secret_basic), checks it offline against the published JWKS with
// jose, and calls the PaymentService with `authorization: Bearer <token>`.
//
// The protos are loaded at run time from ../../protos (no generated code). Progress goes to
// stdout; the last stdout line is a one-line JSON summary. Neither the client secret nor a whole
// token is ever printed.

import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import { createRequire } from 'node:module';
import { isIP } from 'node:net';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import * as jose from 'jose';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const PROTOS_DIR = path.resolve(HERE, '..', '..', 'protos');
// protobufjs (under @grpc/proto-loader) ships google/protobuf/descriptor.proto as a file and the
// other well-known types (timestamp.proto, ...) built in; its package root is their include dir.
const requireFromLoader = createRequire(createRequire(import.meta.url).resolve('@grpc/proto-loader'));
export const WELL_KNOWN_DIR = path.dirname(requireFromLoader.resolve('protobufjs/package.json'));

export const SCOPES = 'payments:read payments:write payments:refund';
const CALL_TIMEOUT_MS = 10_000;

const USAGE = `usage: node merchant.js [options]

Runs a merchant's payment flow against authsvc's TokenService and the PaymentService:
token -> offline verification (jose) -> CreatePayment -> replay (same idempotency key)
-> GetPayment -> RefundPayment 10.00. The last stdout line is a JSON summary.

options (each also read from the environment variable shown):
  --authsvc-target HOST:PORT   TokenService         [AUTHSVC_TARGET, default 127.0.0.1:50051]
  --payments-target HOST:PORT  PaymentService       [PAYMENTS_TARGET, default 127.0.0.1:50052]
  --client-id ID               OAuth client id      [AUTHSVC_CLIENT_ID, required]
  --client-secret-file FILE    file holding the secret [AUTHSVC_CLIENT_SECRET_FILE]
                               (or the secret itself in AUTHSVC_CLIENT_SECRET; never on the
                               command line, where other users can read it)
  --issuer URL                 expected token issuer [ISSUER, default https://authsvc.local]
  --audience AUD               expected audience    [AUDIENCE, default payments]
  --ca FILE                    PEM CA bundle for TLS to both services [AUTHSVC_CA]
  --jwks-url URL               the TokenService's jwks_uri (https://…/.well-known/jwks.json;
                               http only to loopback): verify with jose's createRemoteJWKSet
                               instead of GetJwks [AUTHSVC_JWKS_URL]
  -h, --help                   print this help

TLS: any host but loopback (127.0.0.0/8, ::1, localhost) and unix: always gets TLS, with --ca or
else the system's roots. Plaintext only to loopback and unix:, and only without --ca: the client
secret and the tokens never cross a network in the clear.`;

// ---------------------------------------------------------------------------------------------
// Configuration

class UsageError extends Error {}

export function loadConfig(argv = process.argv.slice(2), env = process.env) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        'authsvc-target': { type: 'string' },
        'payments-target': { type: 'string' },
        'client-id': { type: 'string' },
        'client-secret-file': { type: 'string' },
        issuer: { type: 'string' },
        audience: { type: 'string' },
        ca: { type: 'string' },
        'jwks-url': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    throw new UsageError(err.message);
  }
  const v = parsed.values;
  if (v.help) return { help: true };

  const pick = (flag, name, fallback) => v[flag] ?? (env[name] || undefined) ?? fallback;
  const clientId = pick('client-id', 'AUTHSVC_CLIENT_ID');
  if (!clientId) throw new UsageError('the client id is missing: set AUTHSVC_CLIENT_ID or --client-id');

  const secretFile = pick('client-secret-file', 'AUTHSVC_CLIENT_SECRET_FILE');
  const inlineSecret = env.AUTHSVC_CLIENT_SECRET || undefined;
  if (secretFile && inlineSecret) {
    throw new UsageError('set either AUTHSVC_CLIENT_SECRET or AUTHSVC_CLIENT_SECRET_FILE, not both');
  }
  let clientSecret = inlineSecret;
  if (secretFile) {
    try {
      clientSecret = readFileSync(secretFile, 'utf8').replace(/\r?\n$/, '');
    } catch (err) {
      throw new UsageError(`cannot read the client secret file ${secretFile}: ${err.code ?? err.message}`);
    }
  }
  if (!clientSecret) {
    throw new UsageError('the client secret is missing: set AUTHSVC_CLIENT_SECRET or AUTHSVC_CLIENT_SECRET_FILE');
  }
  const caFile = pick('ca', 'AUTHSVC_CA');
  let ca;
  if (caFile) {
    try {
      ca = readFileSync(caFile);
    } catch (err) {
      throw new UsageError(`cannot read the CA bundle ${caFile}: ${err.code ?? err.message}`);
    }
  }
  const jwksUrl = pick('jwks-url', 'AUTHSVC_JWKS_URL');
  if (jwksUrl !== undefined) checkJwksUrl(jwksUrl);
  return {
    help: false,
    ca,
    jwksUrl,
    authsvcTarget: pick('authsvc-target', 'AUTHSVC_TARGET', '127.0.0.1:50051'),
    paymentsTarget: pick('payments-target', 'PAYMENTS_TARGET', '127.0.0.1:50052'),
    clientId,
    clientSecret,
    issuer: pick('issuer', 'ISSUER', 'https://authsvc.local'),
    audience: pick('audience', 'AUDIENCE', 'payments'),
  };
}

// ---------------------------------------------------------------------------------------------
// Transport: TLS for every host but loopback and unix:

function splitHostPort(address) {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(address);
  return m ? m[1] ?? m[2] : undefined;
}

function isLoopbackHost(host) {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.split('.')[0] === '127';
  if (isIP(host) === 6) return host === '::1' || /^(0{0,4}:){7}0{0,3}1$/.test(host);
  return false;
}

/**
 * True for a unix: socket or a target whose every address is loopback. Anything this cannot
 * parse (including dns://AUTHORITY/..., which names another DNS server) is not local.
 */
export function isLocalTarget(target) {
  if (target.startsWith('unix:') || target.startsWith('unix-abstract:')) return true;
  let addresses;
  if (target.startsWith('ipv4:') || target.startsWith('ipv6:')) addresses = target.slice(5).split(',');
  else addresses = [target.startsWith('dns:///') ? target.slice('dns:///'.length) : target];
  return addresses.every((address) => {
    const host = splitHostPort(address);
    return host !== undefined && isLoopbackHost(host);
  });
}

/**
 * A jwks_uri must be https, or http to a loopback host: keys fetched in the clear can be swapped
 * for an attacker's, who could then mint tokens this merchant believes.
 */
export function checkJwksUrl(url) {
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    throw new UsageError(`--jwks-url is not a URL: ${url}`);
  }
  const host = parsed.hostname.replace(/^\[|\]$/g, '');
  if (parsed.protocol === 'https:') return;
  if (parsed.protocol === 'http:' && isLoopbackHost(host)) return;
  throw new UsageError(`refusing to fetch signing keys from ${url}: use https (http only to loopback)`);
}

/** Channel credentials for a target: TLS (with `ca`, else the system's roots) unless the target
 * is loopback or unix: and no CA was given. */
export function channelCredentials(target, ca) {
  if (ca === undefined && isLocalTarget(target)) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(ca ?? null);
}

// ---------------------------------------------------------------------------------------------
// gRPC plumbing

export function loadProtos() {
  const definition = protoLoader.loadSync(['authsvc/v1/token.proto', 'payments_svc/v1/payments.proto'], {
    includeDirs: [PROTOS_DIR, WELL_KNOWN_DIR],
    keepCase: true,
    longs: Number, // expires_in is an int64 number of seconds: safe as a JS number
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition);
}

const STATUS_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

/** A failed RPC, with the gRPC status name and the google.rpc.ErrorInfo reason when present. */
export class RpcError extends Error {
  constructor(method, err) {
    const code = STATUS_NAMES[err.code] ?? String(err.code);
    const reason = errorInfoReason(err.metadata);
    super(`${method} failed: ${code}${reason ? ` ${reason}` : ''}: ${err.details || err.message}`);
    this.name = 'RpcError';
    this.code = err.code;
    this.reason = reason;
  }
}

// google.rpc.Status travels in the `grpc-status-details-bin` trailer. Decoding it takes a few
// lines of protobuf wire format: Status{details=3: Any{type_url=1, value=2}},
// ErrorInfo{reason=1, domain=2}.
function* protoFields(buf) {
  let i = 0;
  const varint = () => {
    let result = 0n;
    for (let shift = 0n; ; shift += 7n) {
      if (i >= buf.length) throw new Error('truncated');
      const b = buf[i++];
      result |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return result;
    }
  };
  while (i < buf.length) {
    const key = Number(varint());
    const field = key >>> 3;
    const wire = key & 7;
    if (wire === 0) yield [field, varint()];
    else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else if (wire === 2) {
      const len = Number(varint());
      yield [field, buf.subarray(i, i + len)];
      i += len;
    } else throw new Error('unsupported wire type');
  }
}

function errorInfoReason(metadata) {
  const raw = metadata?.get?.('grpc-status-details-bin')?.[0];
  if (!Buffer.isBuffer(raw)) return undefined;
  try {
    for (const [field, any] of protoFields(raw)) {
      if (field !== 3) continue;
      let typeUrl = '';
      let value;
      for (const [f, v] of protoFields(any)) {
        if (f === 1) typeUrl = v.toString('utf8');
        if (f === 2) value = v;
      }
      if (typeUrl.endsWith('/google.rpc.ErrorInfo') && value) {
        for (const [f, v] of protoFields(value)) if (f === 1) return v.toString('utf8');
      }
    }
  } catch {
    // a malformed detail is not worth hiding the status itself
  }
  return undefined;
}

/** Calls a unary method and resolves with its response, or rejects with an RpcError. */
export function unary(client, method, request, metadata = new grpc.Metadata(), timeoutMs = CALL_TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + timeoutMs }, (err, response) => {
      if (err) reject(new RpcError(method, err));
      else resolve(response);
    });
  });
}

// RFC 6749 §2.3.1: id and secret are application/x-www-form-urlencoded before the Basic encoding.
function formUrlEncode(s) {
  return encodeURIComponent(s)
    .replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)
    .replace(/%20/g, '+');
}

export function basicAuthorization(clientId, clientSecret) {
  const pair = `${formUrlEncode(clientId)}:${formUrlEncode(clientSecret)}`;
  return `Basic ${Buffer.from(pair, 'utf8').toString('base64')}`;
}

// ---------------------------------------------------------------------------------------------
// Token cache

/**
 * Holds one access token and refreshes it before it expires.
 *
 * A token is refreshed once less than min(60 s, lifetime / 2) of it is left. Concurrent callers
 * share one IssueToken call (one fetch in flight at a time); a failed fetch is never cached, so
 * the next call tries again.
 */
export class TokenCache {
  #tokens;
  #clientId;
  #clientSecret;
  #scope;
  #audience;
  #now;
  #current = null; // { accessToken, scope, expiresAt, lifetimeMs }
  #inflight = null;

  constructor({ tokenClient, clientId, clientSecret, scope = SCOPES, audience = ['payments'], now = Date.now }) {
    this.#tokens = tokenClient;
    this.#clientId = clientId;
    this.#clientSecret = clientSecret;
    this.#scope = scope;
    this.#audience = audience;
    this.#now = now;
  }

  /** The access token string; fetches or refreshes it when needed. */
  async token() {
    return (await this.entry()).accessToken;
  }

  /** The cached entry: { accessToken, scope, expiresAt (ms since epoch), lifetimeMs }. */
  async entry() {
    if (this.#current && !this.#needsRefresh(this.#current)) return this.#current;
    if (!this.#inflight) {
      this.#inflight = this.#fetch().finally(() => {
        this.#inflight = null;
      });
    }
    return this.#inflight;
  }

  /**
   * Drops the cached token, e.g. after the resource server refused it. With `token`, only if it
   * is still the cached one: calls refused together drop it once, never its successor.
   */
  invalidate(token) {
    if (token === undefined || this.#current?.accessToken === token) this.#current = null;
  }

  #needsRefresh({ expiresAt, lifetimeMs }) {
    const margin = Math.min(60_000, lifetimeMs / 2);
    return expiresAt - this.#now() < margin;
  }

  async #fetch() {
    const md = new grpc.Metadata();
    md.set('authorization', basicAuthorization(this.#clientId, this.#clientSecret));
    const requested = this.#now(); // count the lifetime from before the request: errs on the early side
    const response = await unary(this.#tokens, 'IssueToken', {
      grant_type: 'client_credentials',
      scope: this.#scope,
      audience: this.#audience,
    }, md);
    if (response.token_type.toLowerCase() !== 'bearer' || !response.access_token) {
      throw new Error(`IssueToken returned an unusable token (token_type ${JSON.stringify(response.token_type)})`);
    }
    const lifetimeMs = Number(response.expires_in) * 1000;
    if (!(lifetimeMs > 0)) throw new Error(`IssueToken returned expires_in ${response.expires_in}`);
    const entry = {
      accessToken: response.access_token,
      scope: response.scope,
      expiresAt: requested + lifetimeMs,
      lifetimeMs,
    };
    this.#current = entry;
    return entry;
  }
}

/** Calls a PaymentService method with the cached bearer token; retries once if the token is refused. */
export async function withBearer(cache, client, method, request) {
  for (let attempt = 0; ; attempt++) {
    const md = new grpc.Metadata();
    const token = await cache.token();
    md.set('authorization', `Bearer ${token}`);
    try {
      return await unary(client, method, request, md);
    } catch (err) {
      // INVALID_TOKEN: the token expired early or its key was retired; a fresh one may pass. The
      // refusal comes before the handler runs, so repeating the call cannot do anything twice.
      if (attempt === 0 && err.code === grpc.status.UNAUTHENTICATED && err.reason === 'INVALID_TOKEN') {
        cache.invalidate(token);
        continue;
      }
      throw err;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Offline verification

/** A fetch for jose that trusts `ca` (a private CA) for https URLs. */
function fetchTrusting(ca) {
  return (url, { headers, signal } = {}) =>
    new Promise((resolve, reject) => {
      const request = https.get(url, { ca, headers, signal }, (response) => {
        const chunks = [];
        response.on('data', (chunk) => chunks.push(chunk));
        response.on('end', () =>
          resolve(new Response(Buffer.concat(chunks), { status: response.statusCode, headers: response.headers })),
        );
        response.on('error', reject);
      });
      request.on('error', reject);
    });
}

/**
 * Verifies an access token the way a resource server does, without asking the TokenService
 * about the token itself: against the jwks_uri with jose's createRemoteJWKSet (which caches the
 * set and refetches only for an unknown kid) when `jwksUrl` is given, else against the set
 * GetJwks returns.
 */
export async function verifyAccessToken(tokenClient, token, { issuer, audience, jwksUrl, ca }) {
  let jwks;
  if (jwksUrl !== undefined) {
    jwks = jose.createRemoteJWKSet(new URL(jwksUrl), ca === undefined ? {} : { [jose.customFetch]: fetchTrusting(ca) });
  } else {
    const { jwks_json: jwksJson } = await unary(tokenClient, 'GetJwks', {});
    jwks = jose.createLocalJWKSet(JSON.parse(jwksJson));
  }
  const { payload, protectedHeader } = await jose.jwtVerify(token, jwks, {
    issuer,
    audience,
    algorithms: ['RS256'],
    typ: 'at+jwt',
    requiredClaims: ['exp', 'iat', 'nbf', 'jti', 'sub', 'client_id', 'scope'],
  });
  return { payload, protectedHeader };
}

// ---------------------------------------------------------------------------------------------
// The merchant's flow

function show(p) {
  const status = p.status.replace(/^PAYMENT_STATUS_/, '').toLowerCase();
  return `${p.transaction_id}  ${p.amount} ${p.currency}  refunded ${p.refunded_amount}  ${status}`;
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

export async function runFlow(config, log = console.log) {
  const proto = loadProtos();
  const tokens = new proto.authsvc.v1.TokenService(
    config.authsvcTarget,
    channelCredentials(config.authsvcTarget, config.ca),
  );
  const payments = new proto.payments_svc.v1.PaymentService(
    config.paymentsTarget,
    channelCredentials(config.paymentsTarget, config.ca),
  );
  try {
    const cache = new TokenCache({
      tokenClient: tokens,
      clientId: config.clientId,
      clientSecret: config.clientSecret,
      scope: SCOPES,
      audience: [config.audience],
    });

    log(`== token from ${config.authsvcTarget} (client_credentials, client_secret_basic)`);
    const entry = await cache.entry();
    log(`   access_token=${entry.accessToken.slice(0, 12)}... (${entry.accessToken.length} bytes)`);
    log(`   scope="${entry.scope}" expires_in=${entry.lifetimeMs / 1000}s`);
    check((await cache.token()) === entry.accessToken, 'the token cache fetched again instead of reusing');

    log(`== offline verification (${config.jwksUrl ? `jose.createRemoteJWKSet ${config.jwksUrl}` : 'GetJwks'} + jose.jwtVerify)`);
    const { payload, protectedHeader } = await verifyAccessToken(tokens, entry.accessToken, config);
    log(`   header: ${JSON.stringify(protectedHeader)}`);
    log(`   claims: ${JSON.stringify(payload)}`);
    check(payload.sub === config.clientId, `the token's sub ${payload.sub} is not ${config.clientId}`);

    log(`== CreatePayment at ${config.paymentsTarget}, then the same request again`);
    const request = {
      amount: '42.00',
      currency: 'USD',
      payment_method: 'pm_card_visa',
      description: 'order from the Node.js merchant',
      idempotency_key: `node-merchant-${randomUUID()}`,
    };
    const paid = (await withBearer(cache, payments, 'CreatePayment', request)).payment;
    log(`   created:  ${show(paid)}`);
    const again = (await withBearer(cache, payments, 'CreatePayment', request)).payment;
    const replayedSame = again.transaction_id === paid.transaction_id;
    log(`   replayed: ${show(again)} ${replayedSame ? '(same payment, charged once)' : '(DIFFERENT!)'}`);
    check(replayedSame, `the replay returned ${again.transaction_id}, not ${paid.transaction_id}`);

    log('== GetPayment');
    const got = (await withBearer(cache, payments, 'GetPayment', { transaction_id: paid.transaction_id })).payment;
    log(`   got:      ${show(got)}`);
    check(got.transaction_id === paid.transaction_id && got.amount === '42.00', 'GetPayment returned another payment');

    log('== RefundPayment 10.00');
    const refunded = (
      await withBearer(cache, payments, 'RefundPayment', {
        transaction_id: paid.transaction_id,
        amount: '10.00',
        idempotency_key: `${request.idempotency_key}-refund-1`,
      })
    ).payment;
    log(`   refunded: ${show(refunded)}`);
    check(refunded.refunded_amount === '10.00', `refunded_amount is ${refunded.refunded_amount}, not 10.00`);

    return {
      ok: true,
      transaction_id: paid.transaction_id,
      replayed_same: replayedSame,
      status: refunded.status,
      refunded_amount: refunded.refunded_amount,
      verified_sub: payload.sub,
      verified_with: config.jwksUrl ? 'jwks_uri' : 'GetJwks',
    };
  } finally {
    tokens.close();
    payments.close();
  }
}

export async function main(argv = process.argv.slice(2), env = process.env) {
  let config;
  try {
    config = loadConfig(argv, env);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    console.error(`merchant.js: ${err.message} (see --help)`);
    return 2;
  }
  if (config.help) {
    console.log(USAGE);
    return 0;
  }
  try {
    const summary = await runFlow(config);
    console.log(JSON.stringify(summary));
    return 0;
  } catch (err) {
    let message = err instanceof Error ? err.message : String(err);
    if (err instanceof jose.errors.JOSEError) message = `offline verification failed: ${err.code}: ${message}`;
    // Never echo the secret, whatever an error message might contain.
    message = message.split(config.clientSecret).join('[redacted]');
    console.error(`merchant.js: ${message}`);
    console.log(JSON.stringify({ ok: false, error: message }));
    return 1;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  process.exitCode = await main();
}
