-- streaming-message schema. Applied at start-up (idempotent); see init_db in app.py.

CREATE TABLE IF NOT EXISTS rooms (
    id           TEXT PRIMARY KEY,            -- canonical (lower case) room id
    owner        TEXT,                        -- user id of the creator; NULL for the default room
    title        TEXT NOT NULL DEFAULT '',
    private      INTEGER NOT NULL DEFAULT 0,  -- 1: subscribing needs a token
    history_size INTEGER,                     -- NULL: the server's HISTORY_SIZE
    settings     TEXT NOT NULL DEFAULT '{}',  -- JSON: typewriter speed, theme, ...
    last_id      INTEGER NOT NULL DEFAULT 0,  -- last message id handed out; ids are never reused
    created_at   INTEGER NOT NULL             -- epoch ms
);

-- Recent messages per room, trimmed to the room's history size. payload is the
-- compact JSON exactly as sent on the wire, so a replay re-frames it without re-encoding.
CREATE TABLE IF NOT EXISTS messages (
    room    TEXT NOT NULL,
    id      INTEGER NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (room, id)
) WITHOUT ROWID;
