"""The neutral plugin core: what the engine and the runtimes both stand on.

Plugin references, loading and the registry (``registry``), batch conversion and
schema conformance (``batches``). It imports only the SDK, ``errors`` and ``config``;
nothing here imports ``engine``, ``runtimes``, ``connectors`` or ``targets``.
"""
