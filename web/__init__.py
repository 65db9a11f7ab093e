"""The face of Tributary: the Litestar app and its routes, the CLI, the console pages.

The only layer that reads settings (flags, environment, files) and the only one that speaks
HTTP status codes; everything below raises its own exception types.
"""
