"""Versioned schema migrations, shared by every SQL engine.

Each migration is a version number and a list of statements in portable SQL (types and syntax
that SQLite and PostgreSQL both accept). Migrations only ever append: an applied migration is
never edited. A store applies the missing ones at start, inside one transaction that holds the
database's write lock, so several processes starting at once apply each migration exactly once.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE clients (
                client_id         VARCHAR(128) PRIMARY KEY,
                secret_hash       TEXT NOT NULL,
                allowed_scopes    TEXT NOT NULL,
                default_scopes    TEXT NOT NULL,
                allowed_audiences TEXT NOT NULL,
                default_audience  TEXT NOT NULL,
                token_ttl         INTEGER NOT NULL,
                grant_types       TEXT NOT NULL,
                enabled           BOOLEAN NOT NULL,
                created_at        BIGINT NOT NULL,
                updated_at        BIGINT NOT NULL
            )""",
            """CREATE TABLE signing_keys (
                kid             VARCHAR(64) PRIMARY KEY,
                state           VARCHAR(16) NOT NULL,
                public_jwk      TEXT NOT NULL,
                private_key_enc BYTEA NOT NULL,
                kek_id          VARCHAR(32) NOT NULL,
                created_at      BIGINT NOT NULL,
                activated_at    BIGINT,
                retired_at      BIGINT
            )""",
            """CREATE TABLE service_secrets (
                name      VARCHAR(64) PRIMARY KEY,
                value_enc BYTEA NOT NULL,
                kek_id    VARCHAR(32) NOT NULL
            )""",
        ],
    ),
    (
        2,
        [
            "ALTER TABLE signing_keys ADD COLUMN deactivated_at BIGINT",
            "ALTER TABLE signing_keys ADD COLUMN retire_after BIGINT",
            "ALTER TABLE signing_keys ADD COLUMN revoked_at BIGINT",
            "ALTER TABLE signing_keys ADD COLUMN origin VARCHAR(16) NOT NULL DEFAULT 'generated'",
            # at most one signing key, whatever the processes do
            "CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (state) WHERE state = 'active'",
        ],
    ),
    (
        3,
        [
            # two live secrets: the one a rotation replaced, accepted until its grace ends
            "ALTER TABLE clients ADD COLUMN previous_secret_hash TEXT",
            "ALTER TABLE clients ADD COLUMN previous_secret_expires_at BIGINT",
            # the revocation list, shared by replicas. `sequence` is assigned from the one-row
            # counter below, never from MAX(sequence) + 1, so a number is never reused once its
            # entry is purged; the counter's row lock also makes entries commit in sequence order
            """CREATE TABLE revocations (
                sequence   BIGINT PRIMARY KEY,
                jti        VARCHAR(256),
                client_id  VARCHAR(128),
                not_before BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                CHECK ((jti IS NULL) <> (client_id IS NULL))
            )""",
            "CREATE INDEX revocations_expires_at ON revocations (expires_at)",
            """CREATE TABLE revocation_counter (
                id   INTEGER PRIMARY KEY CHECK (id = 1),
                last BIGINT NOT NULL
            )""",
            "INSERT INTO revocation_counter (id, last) VALUES (1, 0)",
        ],
    ),
    (
        4,
        [
            # each client authenticates one way (issue 13); every client registered before is a
            # client_secret_basic one, which also accepts client_secret_post, as all did
            "ALTER TABLE clients ADD COLUMN auth_method VARCHAR(32) NOT NULL DEFAULT 'client_secret_basic'",
            "ALTER TABLE clients ADD COLUMN jwks TEXT",
            "ALTER TABLE clients ADD COLUMN jwks_uri TEXT",
            "ALTER TABLE clients ADD COLUMN signing_algs TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE clients ADD COLUMN tls_san_dns TEXT",
            "ALTER TABLE clients ADD COLUMN tls_subject_dn TEXT",
            # the jti of every private_key_jwt assertion accepted, until it expires (RFC 7523 §3
            # item 7): the primary key makes a replay lose the race on any replica
            """CREATE TABLE client_assertion_jtis (
                client_id  VARCHAR(128) NOT NULL,
                jti        VARCHAR(256) NOT NULL,
                expires_at BIGINT NOT NULL,
                PRIMARY KEY (client_id, jti)
            )""",
            "CREATE INDEX client_assertion_jtis_expires_at ON client_assertion_jtis (expires_at)",
        ],
    ),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]
