"""Storage: the database contract between bot and engine.

Modules: ``db`` (Database, Limits, upgrade, check_schema), ``config`` (settings), ``schemas``
(typed job contract), ``models`` (tables), ``migrations`` (Alembic: 0001 schema, 0002 job
notes, 0003 job refusals), ``records`` (returned records), ``errors``, ``identities``,
``users``, ``results``, ``workers``, ``embeddings`` (identity safetensors, numpy only),
``fairness`` (claim order).

The job queue is ``jobs``, which re-exports its sub-modules' public functions:
``job_insert`` (the checks and insert of every new job), ``job_holds`` (face requests held for
consent), ``job_queries`` (reads), ``leases`` (worker-side transitions: claim, heartbeat,
progress, fail, release, cancel, expiry), ``job_finish`` (results, note and a face job's
identity in one transaction) and ``job_sql`` (the guarded-update building blocks they share).
"""
