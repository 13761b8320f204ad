-- When a refresh of this connection was last attempted because the provider answered 401 (in any
-- instance), whatever its outcome. Another such refresh waits `refresh_cooldown` seconds, so a
-- provider that refuses every token (a missing scope) costs one refresh per cooldown, not one per
-- request. NULL: none since the connection was made.
ALTER TABLE connections ADD COLUMN refresh_after_401_at BIGINT;
