"""The base layer: params with help (`params`, `params_fields`, `params_checks`), the
run-folder layout, atomic writes and the manifest (`runs`), number formats (`precision`),
timing and memory (`measure`), secrets from the environment (`secrets`). It imports
nothing else of distill."""
