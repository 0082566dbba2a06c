"""dativo-jsondir: a worked example of a third-party dativo connector (see README.md)."""
