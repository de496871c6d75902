"""Every statement that names a table of the pgsessions schema, in one place, rendered once
per schema name: :mod:`.session` (what a PostgresSession and list_sessions send),
:mod:`.export`, :mod:`.retention`, :mod:`.reports` (usage reports), :mod:`.migrations` (the
runner's bookkeeping) and :mod:`.tools` (the drills' and the demo's checks). The schema
itself is the migrations (../migrations/) and, as they leave it, ../schema.sql.
"""
