"""Built-in writers: ordinary plugins written against the public SDK."""
