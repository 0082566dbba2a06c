"""PostgreSQL readers and the PostgreSQL to Arrow type mapping they share."""
