pytest_plugins = ["support.pg_fixtures", "support.s3_fixtures"]
