"""The neutral plugin core: what the engine and the runtimes both stand on.

Plugin references, loading and the registry (``registry``), the runtime protocol and
the runtimes registered by entry point (``hosting``), the one pump that turns a reader's
stream or partitions into conformed batches (``pump``), batch conversion and schema
conformance (``batches``) and the wrapping of plugin errors (``calls``). It imports only
the SDK, ``errors``, ``config`` and the private helpers; nothing here imports ``engine``,
``runtimes``, ``connectors`` or ``targets`` (tests/unit/test_layers.py checks it).
"""
