// Unit tests of TokenCache with a fake TokenService client and a fake clock: `npm test`.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import grpc from '@grpc/grpc-js';

import { basicAuthorization, TokenCache } from '../merchant.js';

function fakeTokenService({ expiresIn = 300 } = {}) {
  const calls = [];
  const pending = [];
  const client = {
    IssueToken(request, metadata, options, callback) {
      calls.push({ request, authorization: metadata.get('authorization')[0] });
      pending.push(callback);
    },
  };
  // Answers the oldest outstanding call with a token, or with an error.
  const answer = (error) => {
    const callback = pending.shift();
    if (error) callback(Object.assign(new Error('boom'), { code: grpc.status.UNAVAILABLE, details: 'down' }));
    else callback(null, { access_token: `tok${calls.length}`, token_type: 'Bearer', expires_in: expiresIn, scope: 's' });
  };
  return { client, calls, answer };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

function cacheWith(fake, clock) {
  return new TokenCache({
    tokenClient: fake.client,
    clientId: 'shop',
    clientSecret: 'se:cr et',
    scope: 'payments:read',
    audience: ['payments'],
    now: () => clock.t,
  });
}

test('one fetch in flight, then the cached token until the refresh window', async () => {
  const clock = { t: 1_000_000 };
  const fake = fakeTokenService({ expiresIn: 300 });
  const cache = cacheWith(fake, clock);
  const both = Promise.all([cache.token(), cache.token()]);
  await tick();
  assert.equal(fake.calls.length, 1);
  fake.answer();
  assert.deepEqual(await both, ['tok1', 'tok1']);
  assert.deepEqual(fake.calls[0].request, {
    grant_type: 'client_credentials',
    scope: 'payments:read',
    audience: ['payments'],
  });

  clock.t += 239_000; // 61 s left: still good
  assert.equal(await cache.token(), 'tok1');
  clock.t += 2_000; // 59 s left: refresh
  const next = cache.token();
  await tick();
  fake.answer();
  assert.equal(await next, 'tok2');
  assert.equal(fake.calls.length, 2);
});

test('a short-lived token is refreshed at half its lifetime', async () => {
  const clock = { t: 0 };
  const fake = fakeTokenService({ expiresIn: 60 });
  const cache = cacheWith(fake, clock);
  const first = cache.token();
  await tick();
  fake.answer();
  assert.equal(await first, 'tok1');
  clock.t = 29_000;
  assert.equal(await cache.token(), 'tok1');
  clock.t = 31_000;
  const second = cache.token();
  await tick();
  fake.answer();
  assert.equal(await second, 'tok2');
});

test('errors are not cached', async () => {
  const clock = { t: 0 };
  const fake = fakeTokenService();
  const cache = cacheWith(fake, clock);
  const failing = cache.token();
  await tick();
  fake.answer(new Error());
  await assert.rejects(failing, /IssueToken failed: UNAVAILABLE: down/);
  const retry = cache.token();
  await tick();
  fake.answer();
  assert.equal(await retry, 'tok2');
  assert.equal(fake.calls.length, 2);
});

test('client_secret_basic form-urlencodes id and secret', () => {
  const header = basicAuthorization('shop', 'se:cr et+!');
  assert.equal(Buffer.from(header.slice('Basic '.length), 'base64').toString(), 'shop:se%3Acr+et%2B%21');
});

test('invalidate(token) drops only the token it names', async () => {
  const fake = fakeTokenService();
  const clock = { t: 0 };
  const cache = cacheWith(fake, clock);
  const first = cache.token();
  fake.answer();
  const tok = await first;
  cache.invalidate('some-older-token');
  assert.equal(await cache.token(), tok, 'a refusal of another token dropped the current one');
  cache.invalidate(tok);
  const second = cache.token();
  fake.answer();
  assert.notEqual(await second, tok);
  assert.equal(fake.calls.length, 2);
});
