"""Storage: the database contract between bot and engine.

Modules: ``db`` (Database, Limits, upgrade, check_schema), ``schemas`` (typed job contract),
``models`` (tables), ``jobs`` (the queue; re-exports ``leases`` and ``job_queries``),
``fairness`` (claim order), ``identities``, ``users``, ``results``, ``workers``,
``embeddings`` (identity safetensors, numpy only), ``records`` (returned records), ``errors``.
"""
