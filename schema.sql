-- streaming-message schema. Applied at start-up (idempotent); see Storage.open in app.py.
-- A column added to an existing table is also in ADDED_COLUMNS (app.py), which adds it to a
-- database made before it (CREATE TABLE IF NOT EXISTS leaves an existing table as it was).

CREATE TABLE IF NOT EXISTS rooms (
    id           TEXT PRIMARY KEY,            -- canonical (lower case) room id
    owner        TEXT,                        -- user id of the creator; NULL for the default room
    title        TEXT NOT NULL DEFAULT '',
    private      INTEGER NOT NULL DEFAULT 0,  -- 1: subscribing needs a token
    history_size INTEGER,                     -- NULL: the server's HISTORY_SIZE
    settings     TEXT NOT NULL DEFAULT '{}',  -- JSON: typewriter speed, theme, ...
    last_id      INTEGER NOT NULL DEFAULT 0,  -- last message id handed out; ids are never reused
    created_at   INTEGER NOT NULL,            -- epoch ms
    max_age_s    INTEGER                      -- seconds: older messages are not replayed; NULL: none
);
CREATE INDEX IF NOT EXISTS rooms_owner ON rooms (owner);  -- rooms per user (MAX_ROOMS_PER_USER)

-- The last id of each deleted room. A room made again with its id goes on from there: a
-- client resuming with an id of the old room gets every message of the new one.
CREATE TABLE IF NOT EXISTS deleted_rooms (
    id      TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
);

-- Recent messages per room, trimmed to the room's history size (and max age). payload is
-- the compact JSON exactly as sent on the wire, so a replay re-frames it without re-encoding.
CREATE TABLE IF NOT EXISTS messages (
    room       TEXT NOT NULL,
    id         INTEGER NOT NULL,
    payload    TEXT NOT NULL,
    expires_at INTEGER,                       -- epoch ms: not replayed from then on; NULL: never
    PRIMARY KEY (room, id)
) WITHOUT ROWID;

-- Messages published with `at` or `delay`, until they are delivered (then they are messages,
-- with an id of that time) or cancelled. Delivering one deletes it in the transaction that
-- stores its message: of several processes, one delivers it, once.
CREATE TABLE IF NOT EXISTS scheduled_messages (
    id         TEXT PRIMARY KEY,              -- public, for listing and cancelling
    room       TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    message    TEXT NOT NULL,                 -- JSON: speaker, data, meta (and expires_in)
    due_at     INTEGER NOT NULL,              -- epoch ms
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS scheduled_messages_due ON scheduled_messages (due_at);
CREATE INDEX IF NOT EXISTS scheduled_messages_room ON scheduled_messages (room, due_at);

-- Accounts (see "Auth" in app.py). Usernames are ASCII, so NOCASE makes them unique
-- ignoring case. No secret is stored in plain text: passwords as argon2id hashes, tokens
-- (random, high-entropy) as SHA-256 hashes.
CREATE TABLE IF NOT EXISTS users (
    id            TEXT PRIMARY KEY,            -- random; rooms.owner and the JWT's sub
    username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,               -- argon2id, PHC string
    role          TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL             -- epoch ms
);

-- A login. Its refresh tokens rotate within it; its access JWTs carry its id (claim sid)
-- and stop working when it is revoked (logout, refresh-token reuse, new password, disable).
CREATE TABLE IF NOT EXISTS sessions (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user_id);

CREATE TABLE IF NOT EXISTS refresh_tokens (
    hash       TEXT PRIMARY KEY,               -- SHA-256 of the token
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL,               -- epoch ms
    rotated_at INTEGER                         -- exchanged; presenting it again revokes the session
);
CREATE INDEX IF NOT EXISTS refresh_tokens_session ON refresh_tokens (session_id);

-- Tokens for scripts, bots and OBS.
CREATE TABLE IF NOT EXISTS api_tokens (
    id         TEXT PRIMARY KEY,               -- public, for listing and revoking
    hash       TEXT NOT NULL UNIQUE,           -- SHA-256 of the secret
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    rooms      TEXT,                           -- JSON array of room ids; NULL: all the user's rooms
    rights     TEXT NOT NULL,                  -- JSON array of "publish", "subscribe"
    expires_at INTEGER,                        -- epoch ms; NULL: never
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS api_tokens_user ON api_tokens (user_id);

-- One row, written by every readiness check (GET /readyz): a commit that proves SQLite
-- takes writes (a full disk or a read-only file fails it).
CREATE TABLE IF NOT EXISTS readiness (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at INTEGER NOT NULL                -- epoch ms
);

-- Keys of idempotent publishes (Idempotency-Key), kept IDEMPOTENCY_WINDOW_S: a retry with
-- one gets the first publish's messages instead of storing them again. Written in the
-- transaction that stores the messages, so a key is never stored without them.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope       TEXT NOT NULL,                 -- who published: user ids, or "root"
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,                 -- SHA-256 of the messages published with it
    payloads    TEXT NOT NULL,                 -- JSON array: the messages as stored
    created_at  INTEGER NOT NULL,              -- epoch ms
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_at);

-- Files a room's publishers upload for its players: speaker avatars, the images of the
-- `@{name}` code, speakers' typing sounds. Images and sounds only (PNG, JPEG, WebP, GIF,
-- WAV, OGG, MP3, checked by their first bytes; never SVG, which can hold script), at most
-- MAX_UPLOAD_BYTES each and MAX_UPLOADS_PER_ROOM per room; they go with their room.
CREATE TABLE IF NOT EXISTS uploads (
    room       TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,                  -- [a-z0-9_-]{1,64}, lower case
    type       TEXT NOT NULL,                  -- image/png, image/jpeg, ..., audio/wav, ...
    data       BLOB NOT NULL,
    etag       TEXT NOT NULL,                  -- SHA-256 of data, hex
    created_at INTEGER NOT NULL,               -- epoch ms
    PRIMARY KEY (room, name)
);
