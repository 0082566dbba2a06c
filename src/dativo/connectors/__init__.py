"""Built-in readers: ordinary plugins written against the public SDK."""
