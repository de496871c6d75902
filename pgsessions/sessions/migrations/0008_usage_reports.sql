-- pgsessions 0008: usage reports by time range (`pgsessions usage`) read usage_logs by
-- created_at; without this index every report would scan the whole table. One row per turn is
-- written, so the extra index costs little. Nothing is added to messages (the hot table):
-- per-session reports reach it through its primary key only.
CREATE INDEX IF NOT EXISTS usage_logs_created_idx ON {schema}.usage_logs (created_at);
