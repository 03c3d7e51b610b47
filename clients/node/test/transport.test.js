// Which targets the merchant may dial in plaintext: only loopback and unix:, and only without a CA.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { channelCredentials, checkJwksUrl, isLocalTarget } from '../merchant.js';

const LOCAL = ['127.0.0.1:50051', '127.1.2.3:1', 'localhost:50051', '[::1]:50051', 'dns:///localhost:1',
  'ipv4:127.0.0.1:1,127.0.0.2:1', 'ipv6:[::1]:1', 'unix:/run/authsvc.sock'];
const REMOTE = ['authsvc.example.com:443', 'dns:///authsvc.example.com:443', '10.0.0.1:50051',
  '[2001:db8::1]:443', 'ipv4:127.0.0.1:1,10.0.0.1:1', 'dns://10.0.0.53/localhost:1', 'localhost',
  '127.0.0.1', 'localhost.evil.example:1', '127.0.0.1.evil.example:1'];

for (const target of LOCAL) {
  test(`plaintext allowed to ${target}`, () => {
    assert.equal(isLocalTarget(target), true);
    assert.equal(channelCredentials(target, undefined)._isSecure(), false);
    assert.equal(channelCredentials(target, Buffer.from(''))._isSecure(), true, 'a CA always means TLS');
  });
}

for (const target of REMOTE) {
  test(`TLS required to ${target}`, () => {
    assert.equal(isLocalTarget(target), false);
    assert.equal(channelCredentials(target, undefined)._isSecure(), true);
  });
}

for (const url of ['https://auth.example.com/.well-known/jwks.json', 'http://127.0.0.1:8080/.well-known/jwks.json',
  'http://localhost/jwks', 'http://[::1]:1/jwks']) {
  test(`jwks_uri allowed: ${url}`, () => assert.doesNotThrow(() => checkJwksUrl(url)));
}
for (const url of ['http://auth.example.com/.well-known/jwks.json', 'http://10.0.0.1/jwks', 'ftp://127.0.0.1/jwks',
  'file:///etc/jwks.json', 'not a url']) {
  test(`jwks_uri refused: ${url}`, () => assert.throws(() => checkJwksUrl(url)));
}
