pytest_plugins = ["support.pg_fixtures", "support.s3_fixtures", "support.kms_fixtures", "support.iceberg_fixtures"]
