"""A plugin module whose own import fails (a dependency of the plugin is missing)."""

import a_dependency_that_is_not_installed  # noqa: F401
