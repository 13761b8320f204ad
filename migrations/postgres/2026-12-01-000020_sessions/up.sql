-- My Settings → Sessions: what a user sees of each signed-in browser. `public_id` names a session
-- in pages and URLs (never the id or its hash); `last_seen_at` is NULL until the first request
-- after sign-in and is then updated at most once a minute, with the address and user agent seen.
ALTER TABLE sessions ADD COLUMN public_id TEXT NOT NULL DEFAULT '';
UPDATE sessions SET public_id = replace(gen_random_uuid()::text, '-', '');
CREATE UNIQUE INDEX sessions_public_id ON sessions(public_id);
ALTER TABLE sessions ADD COLUMN last_seen_at BIGINT;
ALTER TABLE sessions ADD COLUMN ip TEXT;
ALTER TABLE sessions ADD COLUMN user_agent TEXT;
