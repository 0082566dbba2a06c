"""The plugin SDK's version, apart from the SDK itself so that reading it imports nothing (``dativo --version``)."""

#: See :data:`dativo.sdk.SDK_API_VERSION`.
SDK_API_VERSION = "1.5.0"
