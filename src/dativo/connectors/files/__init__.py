"""Built-in ``files`` connector and reader: CSV, Parquet and JSON lines from local paths or S3.

The package: ``connector.py`` (the declaration and the keys of ``source:``),
``listing.py`` (file systems, paths, globs), ``formats.py`` (extensions, options,
Arrow type strings), ``errors.py`` (what is transient), ``reader.py`` (:class:`FileReader`).

Job configuration (the ``source`` section)::

    source:
      connector: files
      path: data/orders/*.csv          # a file, a directory, a glob, or s3://bucket/key-or-prefix
      format: csv                      # csv | parquet | jsonl (alias json, ndjson); else from the extension
      connection:                      # only for s3:// paths; every key optional
        endpoint_url: http://127.0.0.1:9000
        region: eu-west-1
        access_key_id: ...
        secret_access_key: ...
        session_token: ...
        anonymous: false
        allow_http: true               # see dativo.sdk_connectors.S3Connection
      options:
        schema: {id: int64, amount: "decimal128(14,2)", at: "timestamp[us, tz=UTC]"}
        delimiter: ";"                 # CSV only; also quote_char, escape_char, header, null_values, encoding
      cast_to_text: [raw_payload]

Rules (the documented behaviour):

* **Which files.** A file path is read whatever its name. A directory is listed
  recursively and only files with an extension of the format are read. A glob
  (``*``, ``?``, ``[...]``; ``**`` spans directories) reads every file it
  matches. In directory and glob listings, names starting with ``.`` or ``_``
  (``_SUCCESS``, ``.crc``) are skipped. Files are read in sorted path order.
  Nothing matched is a :class:`~dativo.errors.SourceError`.
* **Format.** ``format`` wins; otherwise it comes from the extension:
  ``.csv``; ``.parquet``/``.pq``; ``.jsonl``/``.ndjson``/``.json`` (JSON
  *lines*: one object per line). CSV and JSON lines may be compressed:
  ``.gz``, ``.bz2``, ``.lz4``, ``.zstd``.
* **Schema.** With ``options.schema`` the declared columns, in declared order,
  are the schema: other columns of the files are ignored, and a declared column
  missing from a CSV or Parquet file is an error (a JSON object without the key
  gives null). Without it the schema is inferred from the *first* file alone
  (for CSV and JSON from its first block, 1 MiB or the larger block a longer first
  row needs), then normalised: a column
  with only nulls becomes ``string`` and dictionary-encoded columns are decoded.
  Every later file must have exactly those column names, in any order (JSON
  lines may lack keys, which gives nulls; extra keys are looked for in each
  file's first block); its values are converted to the schema's types (CSV and
  JSON are parsed straight into them, Parquet columns are cast), and a file with
  a missing or extra column or values that do not convert fails the run naming
  the file and the column.
  Columns listed in ``cast_to_text`` become ``string`` (CSV keeps the raw text).
* **Long rows.** CSV and JSON lines are parsed in blocks of 1 MiB, and a row must
  fit in one: a longer row (a value of several MiB) makes the reader read that file
  again with blocks 8 times larger, skipping the rows it already gave, up to 1 GiB
  (the larger block is kept for the files after).
* **CSV.** A header line is expected (``header: false`` names columns after
  ``options.schema``, else ``f0``, ``f1``...). An unquoted empty field is null, a
  quoted empty field (``""``) is an empty string (PostgreSQL's CSV convention);
  ``null_values`` replaces the list of null spellings. Quoted values may span
  lines. A file that is not valid UTF-8 needs ``encoding``.
* **Types** in ``options.schema`` are Arrow type strings: ``int64``, ``float64``,
  ``bool``, ``string``, ``binary``, ``date32``, ``timestamp[us]``,
  ``timestamp[us, tz=UTC]``, ``decimal128(14,2)``, ``time64[us]``... (see
  :func:`parse_arrow_type`). A tz-aware timestamp column needs values with a
  zone offset (``Z``, ``+02:00``); naive values need a naive ``timestamp[...]``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # loaded on first use: the connector declaration must stay light (no pyarrow)
    from dativo.connectors.files.formats import FORMAT_EXTENSIONS, parse_arrow_type
    from dativo.connectors.files.reader import FileReader

__all__ = ["FORMAT_EXTENSIONS", "FileReader", "parse_arrow_type"]

_LAZY = {
    "FileReader": "dativo.connectors.files.reader",
    "FORMAT_EXTENSIONS": "dativo.connectors.files.formats",
    "parse_arrow_type": "dativo.connectors.files.formats",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dativo.connectors.files' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
