"""Storage: the database contract between bot and engine.

Modules: ``db`` (Database, upgrade, check_schema), ``schemas`` (typed job contract),
``models`` (tables), ``jobs`` (queue transitions and reads), ``identities``, ``users``,
``results``, ``workers``, ``embeddings`` (identity safetensors, numpy only), ``errors``.
"""
