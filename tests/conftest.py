pytest_plugins = ["rewind_testbed.pytest_plugin"]
